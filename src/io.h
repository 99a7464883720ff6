/*-------------------------------------------------------------------------
 *
 * io.h
 *		The I/O core of the network loops (io.c), the egress policy
 *		(egress.c) and libcurl transfers on the core (transfer.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CERTCTL_SCHED_IO_H
#define CERTCTL_SCHED_IO_H

#include <sys/socket.h>

#include "datatype/timestamp.h"

typedef struct IoCore IoCore;
typedef void (*IoReadyFn) (void *ptr, uint32 events, void *arg);

extern bool certctl_sched_io_acquire_fd(void);
extern void certctl_sched_io_release_fd(void);
extern IoCore *certctl_sched_io_start(void);
extern void certctl_sched_io_finish(IoCore *io);
extern bool certctl_sched_io_watch(IoCore *io, int fd, uint32 events, void *ptr, bool already_watched);
extern void certctl_sched_io_forget(IoCore *io, int fd);
extern bool certctl_sched_io_wait(IoCore *io, long timeout_ms, IoReadyFn ready, void *arg);

/* egress.c: may the loops connect to this address? NULL if so, else why not */
extern bool certctl_sched_allow_loopback;
extern void certctl_sched_egress_refresh(void);
extern const char *certctl_sched_egress_refusal(const struct sockaddr *addr);
extern void certctl_sched_format_address(const struct sockaddr *addr, char *buf, size_t len);

/* transfer.c: one HTTP request or SMTP message */
typedef struct Transfer
{
	/* request, set by the caller */
	const char *url;			/* http(s):// or smtp(s):// */
	char	  **headers;		/* "Name: value" lines (HTTP), NULL-terminated, or NULL */
	const char *body;			/* HTTP request body, or the whole mail message (CRLF lines) */
	const char *mail_from;		/* SMTP envelope sender */
	const char *mail_rcpt;		/* SMTP envelope recipient */
	const char *username;		/* SMTP AUTH */
	const char *password;
	bool		starttls;		/* smtp://: require STARTTLS */
	const char *group;			/* concurrency group (e.g. the channel): at most per_group at once */
	int			index;			/* the caller's */
	/* outcome, set by transfer.c */
	bool		started;
	bool		done;			/* finished: success, failure or refusal (not aborted) */
	long		status;			/* HTTP status, or the last SMTP reply code (0: none) */
	int			curl_code;		/* CURLcode */
	char		error[256];		/* why it failed: curl's error, or the address refusal */
	bool		refused;		/* its address was refused by the egress policy */
	bool		no_fd;			/* no file descriptor was left for its socket */
	long		retry_after_s;	/* Retry-After (seconds), -1: none */
	char		response[256];	/* the start of the response body */
	int			response_len;
} Transfer;

typedef struct TransferLimits
{
	int			concurrency;	/* transfers in flight */
	int			per_group;		/* of one group */
	int			timeout_ms;		/* connect and whole transfer */
	TimestampTz (*stop_at) (void *arg); /* soft stop: abort what is in flight (0: none); asked again and again */
	void	   *arg;
	bool		(*stop_starting) (void);	/* no new transfer from now on (SIGTERM) */
	int			breaker;		/* a group starts no more after this many transient failures in a row (0: never) */
	bool		(*transient) (const Transfer *t);	/* is a finished transfer's failure transient? */
} TransferLimits;

extern int	certctl_sched_transfer_all(Transfer *transfers, int n, const TransferLimits *limits);
extern char *certctl_sched_http_proxy;
extern char *certctl_sched_ca_file;

#endif							/* CERTCTL_SCHED_IO_H */
