/*-------------------------------------------------------------------------
 *
 * egress.c
 *		Where the network loops may connect: every address is checked when
 *		the socket is opened, after name resolution, so a name that resolves
 *		to a reserved address (DNS rebinding) is refused too.
 *
 * Refused: loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16,
 * fe80::/10), multicast (224.0.0.0/4, ff00::/8), broadcast
 * (255.255.255.255) and unspecified (0.0.0.0/8, ::) addresses, IPv4-mapped
 * IPv6 addresses by their IPv4 address; and this host's own addresses (its
 * interfaces', read when each run starts), which reach the database host's
 * services as loopback does.  certctl_sched.allow_loopback, a superuser-only
 * setting, lets loopback and the host's own addresses through (tests, labs).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include "utils/memutils.h"

#include "io.h"

bool		certctl_sched_allow_loopback = false;

/* this host's interface addresses, as of the last certctl_sched_egress_refresh() */
static struct sockaddr_storage *host_addrs = NULL;
static int	nhost_addrs = 0;

/* Reads this host's interface addresses (on failure, keeps the previous ones). */
void
certctl_sched_egress_refresh(void)
{
	struct ifaddrs *ifs;
	int			n = 0;
	struct sockaddr_storage *addrs;

	if (getifaddrs(&ifs) != 0)
		return;
	for (struct ifaddrs *i = ifs; i; i = i->ifa_next)
		if (i->ifa_addr && (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6))
			n++;
	addrs = MemoryContextAllocZero(TopMemoryContext, sizeof(struct sockaddr_storage) * Max(n, 1));
	n = 0;
	for (struct ifaddrs *i = ifs; i; i = i->ifa_next)
		if (i->ifa_addr && (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6))
			memcpy(&addrs[n++], i->ifa_addr,
				   i->ifa_addr->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
	freeifaddrs(ifs);
	if (host_addrs)
		pfree(host_addrs);
	host_addrs = addrs;
	nhost_addrs = n;
}

/* Returns whether an IPv4 (host byte order, 0 if none) or IPv6 address is one of this host's. */
static bool
is_host_address(uint32 v4, const struct in6_addr *v6)
{
	for (int i = 0; i < nhost_addrs; i++)
	{
		const struct sockaddr *a = (const struct sockaddr *) &host_addrs[i];

		if (v6 == NULL && a->sa_family == AF_INET &&
			ntohl(((const struct sockaddr_in *) a)->sin_addr.s_addr) == v4)
			return true;
		if (v6 != NULL && a->sa_family == AF_INET6 &&
			memcmp(&((const struct sockaddr_in6 *) a)->sin6_addr, v6, sizeof(*v6)) == 0)
			return true;
	}
	return false;
}

/* Returns why an IPv4 address (host byte order) is refused, or NULL. */
static const char *
ipv4_refusal(uint32 a)
{
	if ((a >> 24) == 127)
		return certctl_sched_allow_loopback ? NULL : "loopback";
	if ((a >> 24) == 0)
		return "unspecified";
	if ((a >> 16) == ((169 << 8) | 254))
		return "link-local";
	if ((a >> 28) == 0xe)
		return "multicast";
	if (a == 0xffffffff)
		return "broadcast";
	if (!certctl_sched_allow_loopback && is_host_address(a, NULL))
		return "this host's own";
	return NULL;
}

/* Returns why an IPv6 address is refused, or NULL. */
static const char *
ipv6_refusal(const struct in6_addr *a)
{
	const uint8 *b = a->s6_addr;

	if (IN6_IS_ADDR_V4MAPPED(a))
		return ipv4_refusal(((uint32) b[12] << 24) | ((uint32) b[13] << 16) | ((uint32) b[14] << 8) | b[15]);
	if (IN6_IS_ADDR_LOOPBACK(a))
		return certctl_sched_allow_loopback ? NULL : "loopback";
	if (IN6_IS_ADDR_UNSPECIFIED(a))
		return "unspecified";
	if (IN6_IS_ADDR_LINKLOCAL(a))
		return "link-local";
	if (IN6_IS_ADDR_MULTICAST(a))
		return "multicast";
	if (!certctl_sched_allow_loopback && is_host_address(0, a))
		return "this host's own";
	return NULL;
}

/*
 * Returns why the loops may not connect to addr (e.g. "loopback"), or NULL
 * when they may.  Addresses of other families are refused.
 */
const char *
certctl_sched_egress_refusal(const struct sockaddr *addr)
{
	if (addr->sa_family == AF_INET)
		return ipv4_refusal(ntohl(((const struct sockaddr_in *) addr)->sin_addr.s_addr));
	if (addr->sa_family == AF_INET6)
		return ipv6_refusal(&((const struct sockaddr_in6 *) addr)->sin6_addr);
	return "not an IP address";
}

/* Writes addr's IP address (without port) into buf. */
void
certctl_sched_format_address(const struct sockaddr *addr, char *buf, size_t len)
{
	const void *a = addr->sa_family == AF_INET6 ?
		(const void *) &((const struct sockaddr_in6 *) addr)->sin6_addr :
		(const void *) &((const struct sockaddr_in *) addr)->sin_addr;

	if (inet_ntop(addr->sa_family, a, buf, len) == NULL)
		strlcpy(buf, "?", len);
}
