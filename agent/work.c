/* work.c: the worker pool and the post-back queue to the service thread.
 *
 * Jobs are fn(arg) pairs run by a pool that grows on demand from min to max threads (a job may
 * block for a long time: a slow client on a streamed download, an upload waiting for bytes) and
 * shrinks back after 30 s idle. work_post() queues a call for the service thread and wakes it
 * with lws_cancel_service(); the service thread drains the queue one item at a time under the
 * lock (lws-notes T8: wake-ups coalesce). Both queues are protected by pool->mu. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent.h"

struct job {
	struct job *next;
	work_fn fn;
	void *arg;
};

struct work_pool {
	struct agent *ag;
	pthread_mutex_t mu;
	pthread_cond_t cv;	  /* jobs available or stopping */
	pthread_cond_t exit_cv;	  /* a thread exited */
	struct job *head, *tail;  /* pending jobs (mu) */
	struct job *phead, *ptail; /* posted to the service thread (mu) */
	int threads, idle;	  /* (mu) */
	int min_threads, max_threads;
	bool stopping;		  /* (mu) */
	bool loop_gone;		  /* (mu) the lws context is being destroyed: no more wake-ups */
};

static _Thread_local bool on_service_thread;

bool agent_on_service_thread(void)
{
	return on_service_thread;
}

void agent_mark_service_thread(void)
{
	on_service_thread = true;
}

static void *worker_main(void *arg)
{
	struct work_pool *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->head && !p->stopping) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 30;
			p->idle++;
			int r = pthread_cond_timedwait(&p->cv, &p->mu, &ts);
			p->idle--;
			if (r == ETIMEDOUT && !p->head && p->threads > p->min_threads)
				goto out;
		}
		if (!p->head && p->stopping)
			break;
		struct job *j = p->head;
		p->head = j->next;
		if (!p->head)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);
		j->fn(j->arg);
		free(j);
		pthread_mutex_lock(&p->mu);
	}
out:
	p->threads--;
	pthread_cond_broadcast(&p->exit_cv);
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static int spawn_thread(struct work_pool *p)
{
	pthread_t t;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 512u << 10);
	int r = pthread_create(&t, &attr, worker_main, p);
	pthread_attr_destroy(&attr);
	if (r == 0)
		p->threads++;
	return -r;
}

int work_pool_new(struct work_pool **ret, struct agent *ag, int min_threads, int max_threads)
{
	struct work_pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->ag = ag;
	p->min_threads = min_threads;
	p->max_threads = max_threads;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->exit_cv, NULL);
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < min_threads; i++)
		spawn_thread(p);
	pthread_mutex_unlock(&p->mu);
	*ret = p;
	return 0;
}

void work_submit(struct work_pool *p, work_fn fn, void *arg)
{
	struct job *j = malloc(sizeof(*j));
	if (!j)
		abort(); /* out of memory for 24 bytes: nothing sensible left to do */
	j->next = NULL;
	j->fn = fn;
	j->arg = arg;
	pthread_mutex_lock(&p->mu);
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	/* Grow when every thread is busy: jobs may block on slow clients. */
	if (p->idle == 0 && p->threads < p->max_threads)
		spawn_thread(p);
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

void work_post(struct work_pool *p, work_fn fn, void *arg)
{
	struct job *j = malloc(sizeof(*j));
	if (!j)
		abort();
	j->next = NULL;
	j->fn = fn;
	j->arg = arg;
	pthread_mutex_lock(&p->mu);
	if (p->ptail)
		p->ptail->next = j;
	else
		p->phead = j;
	p->ptail = j;
	bool wake = !p->loop_gone;
	/* Woken under the lock so the context cannot be destroyed in between. */
	if (wake)
		lws_cancel_service(p->ag->ctx);
	pthread_mutex_unlock(&p->mu);
}

void work_pool_detach_loop(struct work_pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->loop_gone = true;
	pthread_mutex_unlock(&p->mu);
}

void work_run_posted(struct work_pool *p)
{
	for (;;) {
		pthread_mutex_lock(&p->mu);
		struct job *j = p->phead;
		if (j) {
			p->phead = j->next;
			if (!p->phead)
				p->ptail = NULL;
		}
		pthread_mutex_unlock(&p->mu);
		if (!j)
			return;
		j->fn(j->arg);
		free(j);
	}
}

void work_pool_free(struct work_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	pthread_cond_broadcast(&p->cv);
	while (p->threads > 0)
		pthread_cond_wait(&p->exit_cv, &p->mu);
	/* Posted items whose loop is gone: run them so their references are dropped. */
	pthread_mutex_unlock(&p->mu);
	work_run_posted(p);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	pthread_cond_destroy(&p->exit_cv);
	free(p);
}
