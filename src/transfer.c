/*-------------------------------------------------------------------------
 *
 * transfer.c
 *		HTTP requests and SMTP messages, many at once, with libcurl's multi
 *		interface driven by the I/O core (io.c).
 *
 * libcurl tells which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when
 * its next timeout is due (CURLMOPT_TIMERFUNCTION); the I/O core waits for
 * both and for the latch.  Sockets are opened by our CURLOPT_OPENSOCKETFUNCTION,
 * which counts them with AcquireExternalFD() and refuses addresses the
 * egress policy forbids (egress.c) after name resolution.
 *
 * libcurl inside a backend: no signals (CURLOPT_NOSIGNAL), and every signal
 * blocked while libcurl runs, so that the threads of its resolver, which
 * inherit the mask, never take PostgreSQL's; callbacks never raise an error
 * or palloc; redirects are not followed; proxies come only from
 * certctl_sched.http_proxy, never from the environment; only http, https,
 * smtp and smtps; handles and sockets are freed on every path, errors
 * included.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "miscadmin.h"
#include "utils/timestamp.h"

#include "io.h"

char	   *certctl_sched_http_proxy = NULL;
char	   *certctl_sched_ca_file = NULL;

/* curl_multi_assign()'s mark of a socket already in the I/O core */
#define WATCHED		((void *) 1)

/* a group's consecutive transient failures in this call, and whether its circuit broke */
typedef struct GroupState
{
	const char *group;
	int			failures;
	bool		tripped;
} GroupState;

/* what the run keeps per transfer */
typedef struct TransferState
{
	CURL	   *easy;			/* while in flight */
	struct curl_slist *headers;
	struct curl_slist *rcpt;
	size_t		uploaded;		/* SMTP: bytes of body given to libcurl */
	char		curl_error[CURL_ERROR_SIZE];
} TransferState;

typedef struct TransferRun
{
	Transfer   *t;
	TransferState *state;
	int			n;
	const TransferLimits *limits;
	CURLM	   *multi;
	IoCore	   *io;
	int			in_flight;
	TimestampTz timer_at;		/* libcurl's next timeout, 0: none */
	GroupState *groups;
	int			ngroups;
} TransferRun;

static bool curl_ready = false;

/* Blocks every signal while libcurl runs (its threads inherit the mask); returns the previous mask in *saved. */
static void
curl_enter(sigset_t *saved)
{
	sigset_t	all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, saved);
}

/* Restores the signal mask saved by curl_enter(). */
static void
curl_leave(const sigset_t *saved)
{
	pthread_sigmask(SIG_SETMASK, saved, NULL);
}

/* Initializes libcurl once per process. */
static void
ensure_curl(void)
{
	sigset_t	saved;
	CURLcode	rc;

	if (curl_ready)
		return;
	curl_enter(&saved);
	rc = curl_global_init(CURL_GLOBAL_DEFAULT);
	curl_leave(&saved);
	if (rc != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl: %s", curl_easy_strerror(rc))));
	curl_ready = true;
}

/*
 * CURLMOPT_SOCKETFUNCTION: watch, re-watch or forget a socket in the I/O
 * core.  The I/O core reports the descriptor itself (no allocation to free,
 * nothing to read after libcurl closed it).  A socket epoll refuses makes
 * libcurl abort its transfer, which then fails like any other.
 */
static int
socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	TransferRun *run = (TransferRun *) userp;
	uint32		events = 0;

	if (what == CURL_POLL_REMOVE)
	{
		if (socketp != NULL)
		{
			certctl_sched_io_forget(run->io, s);
			curl_multi_assign(run->multi, s, NULL);
		}
		return 0;
	}
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		events |= EPOLLIN;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		events |= EPOLLOUT;
	if (!certctl_sched_io_watch(run->io, s, events, (void *) (intptr_t) s, socketp != NULL))
		return -1;
	if (socketp == NULL)
		curl_multi_assign(run->multi, s, WATCHED);
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: remember when libcurl wants to be called next. */
static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	TransferRun *run = (TransferRun *) userp;

	run->timer_at = timeout_ms < 0 ? 0 :
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	return 0;
}

/*
 * CURLOPT_OPENSOCKETFUNCTION: opens a socket for an address libcurl resolved,
 * unless the egress policy refuses the address or no descriptor is left.
 */
static curl_socket_t
opensocket_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	Transfer   *t = (Transfer *) clientp;
	const char *why = certctl_sched_egress_refusal(&address->addr);
	int			fd;

	if (why != NULL)
	{
		char		ip[64];

		certctl_sched_format_address(&address->addr, ip, sizeof(ip));
		snprintf(t->error, sizeof(t->error), "address %s refused: %s addresses are not allowed", ip, why);
		t->refused = true;
		return CURL_SOCKET_BAD;
	}
	if (!certctl_sched_io_acquire_fd())
	{
		snprintf(t->error, sizeof(t->error), "no file descriptor left");
		t->no_fd = true;
		return CURL_SOCKET_BAD;
	}
	fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
	if (fd < 0)
	{
		certctl_sched_io_release_fd();
		return CURL_SOCKET_BAD;
	}
	return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION: closes a socket opened by opensocket_cb(). */
static int
closesocket_cb(void *clientp, curl_socket_t fd)
{
	close(fd);
	certctl_sched_io_release_fd();
	return 0;
}

/* CURLOPT_WRITEFUNCTION: keeps the start of the response body, for the error message. */
static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	Transfer   *t = (Transfer *) userdata;
	size_t		len = size * nmemb;
	size_t		room = sizeof(t->response) - 1 - t->response_len;
	size_t		keep = Min(len, room);

	memcpy(t->response + t->response_len, ptr, keep);
	t->response_len += keep;
	t->response[t->response_len] = '\0';
	return len;
}

/* CURLOPT_READFUNCTION: the mail message, for SMTP. */
static size_t
read_cb(char *buffer, size_t size, size_t nitems, void *userdata)
{
	TransferRun *run = ((void **) userdata)[0];
	int			i = (int) (intptr_t) ((void **) userdata)[1];
	const char *body = run->t[i].body;
	size_t		left = strlen(body) - run->state[i].uploaded;
	size_t		n = Min(left, size * nitems);

	memcpy(buffer, body + run->state[i].uploaded, n);
	run->state[i].uploaded += n;
	return n;
}

/* Sets the options of transfer i's easy handle. */
static void
configure(TransferRun *run, int i, CURL *easy, void **read_arg)
{
	Transfer   *t = &run->t[i];
	TransferState *st = &run->state[i];
	bool		smtp = pg_strncasecmp(t->url, "smtp", 4) == 0;

	curl_easy_setopt(easy, CURLOPT_URL, t->url);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https,smtp,smtps");
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_QUICK_EXIT, 1L);
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_PROXY, certctl_sched_http_proxy ? certctl_sched_http_proxy : "");
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) run->limits->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) run->limits->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, opensocket_cb);
	curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, t);
	curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, closesocket_cb);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, (void *) (intptr_t) i);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, st->curl_error);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
	if (certctl_sched_ca_file && certctl_sched_ca_file[0])
		curl_easy_setopt(easy, CURLOPT_CAINFO, certctl_sched_ca_file);
	if (smtp)
	{
		curl_easy_setopt(easy, CURLOPT_MAIL_FROM, t->mail_from);
		curl_easy_setopt(easy, CURLOPT_MAIL_RCPT, st->rcpt);
		curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(easy, CURLOPT_INFILESIZE, (long) strlen(t->body));
		curl_easy_setopt(easy, CURLOPT_READFUNCTION, read_cb);
		curl_easy_setopt(easy, CURLOPT_READDATA, read_arg);
		if (t->starttls)
			curl_easy_setopt(easy, CURLOPT_USE_SSL, (long) CURLUSESSL_ALL);
		if (t->username && t->username[0])
		{
			curl_easy_setopt(easy, CURLOPT_USERNAME, t->username);
			curl_easy_setopt(easy, CURLOPT_PASSWORD, t->password ? t->password : "");
		}
	}
	else
	{
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, t->body);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) strlen(t->body));
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, st->headers);
	}
}

/* Builds the curl_slists of transfer i (headers, SMTP recipient), in CurrentMemoryContext's lifetime. */
static bool
build_lists(TransferRun *run, int i)
{
	Transfer   *t = &run->t[i];
	TransferState *st = &run->state[i];
	struct curl_slist *l;

	for (char **h = t->headers; h && *h; h++)
	{
		l = curl_slist_append(st->headers, *h);
		if (l == NULL)
			return false;
		st->headers = l;
	}
	if (t->mail_rcpt)
	{
		l = curl_slist_append(st->rcpt, t->mail_rcpt);
		if (l == NULL)
			return false;
		st->rcpt = l;
	}
	return true;
}

/* Returns the state of group (added on first use). */
static GroupState *
group_state(TransferRun *run, const char *group)
{
	for (int i = 0; i < run->ngroups; i++)
		if (strcmp(run->groups[i].group, group) == 0)
			return &run->groups[i];
	run->groups[run->ngroups].group = group;
	return &run->groups[run->ngroups++];
}

/* Returns how many transfers of group are in flight. */
static int
group_in_flight(TransferRun *run, const char *group)
{
	int			n = 0;

	for (int i = 0; i < run->n; i++)
		if (run->state[i].easy && run->t[i].group && group && strcmp(run->t[i].group, group) == 0)
			n++;
	return n;
}

/* Starts transfer i: returns false (and marks it failed) if libcurl would not take it. */
static bool
start_one(TransferRun *run, int i, void **read_args)
{
	Transfer   *t = &run->t[i];
	TransferState *st = &run->state[i];
	sigset_t	saved;
	CURL	   *easy;
	CURLMcode	mc = CURLM_OUT_OF_MEMORY;

	t->started = true;
	read_args[2 * i] = run;
	read_args[2 * i + 1] = (void *) (intptr_t) i;
	curl_enter(&saved);
	easy = build_lists(run, i) ? curl_easy_init() : NULL;
	if (easy != NULL)
	{
		configure(run, i, easy, &read_args[2 * i]);
		mc = curl_multi_add_handle(run->multi, easy);
		if (mc != CURLM_OK)
			curl_easy_cleanup(easy);
	}
	curl_leave(&saved);
	if (mc != CURLM_OK)
	{
		t->done = true;
		snprintf(t->error, sizeof(t->error), "could not start the transfer: %s", curl_multi_strerror(mc));
		return false;
	}
	st->easy = easy;
	run->in_flight++;
	return true;
}

/* Starts transfers while there is room, in order, skipping those whose group is full. */
static void
start_transfers(TransferRun *run, void **read_args)
{
	const TransferLimits *lim = run->limits;

	if (lim->stop_starting && lim->stop_starting())
		return;
	for (int i = 0; i < run->n && run->in_flight < lim->concurrency; i++)
	{
		if (run->t[i].started)
			continue;
		if (lim->per_group > 0 && group_in_flight(run, run->t[i].group) >= lim->per_group)
			continue;
		if (group_state(run, run->t[i].group ? run->t[i].group : "")->tripped)
			continue;
		(void) start_one(run, i, read_args);
	}
}

/* Returns whether a transfer not yet started could still start. */
static bool
any_waiting(TransferRun *run)
{
	if (run->limits->stop_starting && run->limits->stop_starting())
		return false;
	for (int i = 0; i < run->n; i++)
		if (!run->t[i].started && !group_state(run, run->t[i].group ? run->t[i].group : "")->tripped)
			return true;
	return false;
}

/* Releases transfer i's handle and lists (in flight or finished). */
static void
release_one(TransferRun *run, int i)
{
	TransferState *st = &run->state[i];
	sigset_t	saved;

	curl_enter(&saved);
	if (st->easy)
	{
		curl_multi_remove_handle(run->multi, st->easy);
		curl_easy_cleanup(st->easy);
		run->in_flight--;
	}
	curl_slist_free_all(st->headers);
	curl_slist_free_all(st->rcpt);
	curl_leave(&saved);
	st->easy = NULL;
	st->headers = NULL;
	st->rcpt = NULL;
}

/*
 * Counts a finished transfer toward its group's circuit breaker: after
 * limits->breaker transient failures in a row, no more of the group start.
 */
static void
count_failure(TransferRun *run, const Transfer *t)
{
	GroupState *g;

	if (run->limits->breaker <= 0 || run->limits->transient == NULL)
		return;
	g = group_state(run, t->group ? t->group : "");
	if (!run->limits->transient(t))
		g->failures = 0;
	else if (++g->failures >= run->limits->breaker)
		g->tripped = true;
}

/* Records the outcome of a finished transfer and releases it. */
static void
finish_one(TransferRun *run, int i, CURLcode rc)
{
	Transfer   *t = &run->t[i];
	TransferState *st = &run->state[i];
	curl_off_t	retry_after = -1;

	t->done = true;
	t->curl_code = rc;
	curl_easy_getinfo(st->easy, CURLINFO_RESPONSE_CODE, &t->status);
	if (curl_easy_getinfo(st->easy, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK && retry_after > 0)
		t->retry_after_s = (long) retry_after;
	/* a refused address (or a missing descriptor) is the cause only if no other address could be reached */
	if (rc != CURLE_COULDNT_CONNECT)
		t->refused = t->no_fd = false;
	if (rc != CURLE_OK && !t->refused && !t->no_fd)
		snprintf(t->error, sizeof(t->error), "%s", st->curl_error[0] ? st->curl_error : curl_easy_strerror(rc));
	release_one(run, i);
	count_failure(run, t);
}

/* Reads libcurl's finished transfers. */
static void
collect_done(TransferRun *run)
{
	CURLMsg    *msg;
	int			left;
	sigset_t	saved;

	for (;;)
	{
		curl_enter(&saved);
		msg = curl_multi_info_read(run->multi, &left);
		curl_leave(&saved);
		if (msg == NULL)
			break;
		if (msg->msg == CURLMSG_DONE)
		{
			void	   *priv = NULL;

			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
			finish_one(run, (int) (intptr_t) priv, msg->data.result);
		}
	}
}

/* IoReadyFn: a watched socket is ready: let libcurl act on it. */
static void
on_ready(void *ptr, uint32 events, void *arg)
{
	TransferRun *run = (TransferRun *) arg;
	int			mask = 0;
	int			running;
	sigset_t	saved;

	if (events & EPOLLIN)
		mask |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		mask |= CURL_CSELECT_OUT;
	if (events & (EPOLLERR | EPOLLHUP))
		mask |= CURL_CSELECT_ERR;
	curl_enter(&saved);
	curl_multi_socket_action(run->multi, (curl_socket_t) (intptr_t) ptr, mask, &running);
	curl_leave(&saved);
}

/* Lets libcurl act on its timer if it is due. */
static void
run_timer(TransferRun *run)
{
	int			running;
	sigset_t	saved;

	if (run->timer_at == 0 || GetCurrentTimestamp() < run->timer_at)
		return;
	run->timer_at = 0;
	curl_enter(&saved);
	curl_multi_socket_action(run->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	curl_leave(&saved);
}

/* Returns when the transfers in flight must be aborted (0: never); it moves when SIGTERM comes. */
static TimestampTz
stop_at(TransferRun *run)
{
	return run->limits->stop_at ? run->limits->stop_at(run->limits->arg) : 0;
}

/* Returns how long to wait (ms, -1: no limit): until libcurl's timer or the soft stop, whichever comes first. */
static long
wait_ms(TransferRun *run)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz until = run->timer_at;
	TimestampTz stop = stop_at(run);

	if (stop != 0 && (until == 0 || stop < until))
		until = stop;
	if (until == 0)
		return -1;
	if (until <= now)
		return 0;
	return (long) ((until - now + 999) / 1000);
}

/* Runs the transfers until all are done or the soft stop comes; see certctl_sched_transfer_all(). */
static void
drive(TransferRun *run, void **read_args)
{
	for (;;)
	{
		start_transfers(run, read_args);
		collect_done(run);		/* (a transfer can fail at once) */
		if (run->in_flight == 0 && !any_waiting(run))
			return;
		if (stop_at(run) != 0 && GetCurrentTimestamp() >= stop_at(run))
			return;
		if (certctl_sched_io_wait(run->io, wait_ms(run), on_ready, run))
			CHECK_FOR_INTERRUPTS();
		run_timer(run);
		collect_done(run);
	}
}

/*
 * Performs n transfers, at most limits->concurrency at once (and
 * limits->per_group of one group), each bounded by limits->timeout_ms; a
 * group whose circuit broke starts no more.  At limits->stop_at() the
 * transfers in flight are aborted: they stay started && !done, and those
 * never started stay !started.  Returns how many are
 * done.  An interrupt (the run's cancel, a FATAL) propagates after every
 * handle and socket is released.
 */
int
certctl_sched_transfer_all(Transfer *transfers, int n, const TransferLimits *limits)
{
	TransferRun run;
	void	  **read_args = palloc0(sizeof(void *) * 2 * Max(n, 1));
	int			done = 0;

	ensure_curl();
	memset(&run, 0, sizeof(run));
	run.t = transfers;
	run.n = n;
	run.limits = limits;
	run.state = palloc0(sizeof(TransferState) * Max(n, 1));
	run.groups = palloc0(sizeof(GroupState) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		transfers[i].retry_after_s = -1;
		transfers[i].started = transfers[i].done = transfers[i].refused = transfers[i].no_fd = false;
	}

	PG_TRY();
	{
		sigset_t	saved;

		run.io = certctl_sched_io_start();
		curl_enter(&saved);
		run.multi = curl_multi_init();
		if (run.multi)
		{
			curl_multi_setopt(run.multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
			curl_multi_setopt(run.multi, CURLMOPT_SOCKETDATA, &run);
			curl_multi_setopt(run.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
			curl_multi_setopt(run.multi, CURLMOPT_TIMERDATA, &run);
		}
		curl_leave(&saved);
		if (run.multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl multi handle")));
		drive(&run, read_args);
	}
	PG_FINALLY();
	{
		sigset_t	saved;

		for (int i = 0; i < n; i++)
			release_one(&run, i);
		curl_enter(&saved);
		if (run.multi)
			curl_multi_cleanup(run.multi);
		curl_leave(&saved);
		certctl_sched_io_finish(run.io);
	}
	PG_END_TRY();

	for (int i = 0; i < n; i++)
		if (transfers[i].done)
			done++;
	return done;
}
