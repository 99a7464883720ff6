/*-------------------------------------------------------------------------
 *
 * io.c
 *		The I/O core of the network loops: one event loop over non-blocking
 *		sockets, the process latch and postmaster death.
 *
 * A run of a network loop creates one IoCore: a private epoll descriptor
 * holding every socket of the run's transfers, and one WaitEventSet that
 * waits on the latch, on postmaster death and on that epoll descriptor (an
 * epoll descriptor reads as ready when any descriptor in it is ready).  The
 * set lives for the run: sockets come and go in the epoll descriptor, never
 * in the WaitEventSet, so waiting needs no descriptor of its own.  SIGTERM,
 * run_now() and the guard's cancel set the latch, so they are seen while
 * transfers are in flight.
 *
 * Every descriptor a run opens is counted with AcquireExternalFD(); a socket
 * that cannot be counted is not opened.  Linux-only (epoll), like Debian's
 * PostgreSQL builds.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "io.h"

/* ready sockets handled per wake-up */
#define IO_EVENTS_PER_WAIT	64

struct IoCore
{
	int			epfd;			/* the private epoll descriptor, -1 when closed */
	WaitEventSet *set;			/* latch, postmaster death, epfd */
	int			nwatched;		/* sockets in epfd */
};

/*
 * Counts one more descriptor against the process's share (fd.c); returns
 * false when none is left.  Pair each true with certctl_sched_io_release_fd().
 */
bool
certctl_sched_io_acquire_fd(void)
{
	return AcquireExternalFD();
}

/* Gives back a descriptor counted by certctl_sched_io_acquire_fd(). */
void
certctl_sched_io_release_fd(void)
{
	ReleaseExternalFD();
}

/*
 * Creates the I/O core of a run in the current memory context.  Raises an
 * error when no descriptor is left for its epoll descriptor.
 */
IoCore *
certctl_sched_io_start(void)
{
	IoCore	   *io = palloc0(sizeof(IoCore));

	io->epfd = -1;
	certctl_sched_egress_refresh();
	if (!certctl_sched_io_acquire_fd())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("no file descriptor left for the network loop's event loop"),
				 errhint("Raise max_files_per_process.")));
	io->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (io->epfd < 0)
	{
		certctl_sched_io_release_fd();
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create an epoll descriptor: %m")));
	}
	PG_TRY();
	{
		io->set = CreateWaitEventSet(CurrentMemoryContext, 3);
		AddWaitEventToSet(io->set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		if (IsUnderPostmaster)
			AddWaitEventToSet(io->set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		AddWaitEventToSet(io->set, WL_SOCKET_READABLE, io->epfd, NULL, NULL);
	}
	PG_CATCH();
	{
		certctl_sched_io_finish(io);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return io;
}

/* Closes the I/O core's descriptors; safe on a half-built core and when called twice. */
void
certctl_sched_io_finish(IoCore *io)
{
	if (io == NULL)
		return;
	if (io->set != NULL)
	{
		FreeWaitEventSet(io->set);
		io->set = NULL;
	}
	if (io->epfd >= 0)
	{
		close(io->epfd);
		io->epfd = -1;
		certctl_sched_io_release_fd();
	}
}

/*
 * Watches socket fd for events (EPOLLIN, EPOLLOUT), reporting ptr when it is
 * ready; watching it again changes the events.  Returns false, with errno
 * set, if epoll refuses (the caller fails that one transfer or handshake).
 */
bool
certctl_sched_io_watch(IoCore *io, int fd, uint32 events, void *ptr, bool already_watched)
{
	struct epoll_event ev;

	ev.events = events;
	ev.data.ptr = ptr;
	if (epoll_ctl(io->epfd, already_watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) < 0)
		return false;
	if (!already_watched)
		io->nwatched++;
	return true;
}

/* Stops watching socket fd (before it is closed). */
void
certctl_sched_io_forget(IoCore *io, int fd)
{
	if (epoll_ctl(io->epfd, EPOLL_CTL_DEL, fd, NULL) == 0)
		io->nwatched--;
}

/*
 * Waits until a watched socket is ready, the latch is set, or timeout_ms
 * (-1: none) passes, then calls ready(ptr, events, arg) for every ready
 * socket.  Returns true when the latch was set (and resets it): the caller
 * must then look at its interrupts (CHECK_FOR_INTERRUPTS) and stop flags.
 */
bool
certctl_sched_io_wait(IoCore *io, long timeout_ms, IoReadyFn ready, void *arg)
{
	WaitEvent	occurred;
	struct epoll_event events[IO_EVENTS_PER_WAIT];
	int			n;

	if (WaitEventSetWait(io->set, timeout_ms, &occurred, 1, PG_WAIT_EXTENSION) == 0)
		return false;			/* timeout */
	if (occurred.events & WL_LATCH_SET)
	{
		ResetLatch(MyLatch);
		return true;
	}
	n = epoll_wait(io->epfd, events, IO_EVENTS_PER_WAIT, 0);
	for (int i = 0; i < n; i++)
		ready(events[i].data.ptr, events[i].events, arg);
	return false;
}
