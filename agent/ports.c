/* ports.c: GET /api/v1/ports (agent-api.md §2.5): TCP ports listening on the any-address.
 *
 * Reads /proc/net/tcp and /proc/net/tcp6 on a worker (file reads may block) and caches the
 * result for 100 ms; the cache is static storage with its own lock, so it outlives the table
 * and any worker still running at shutdown. Rows are taken when the socket is in LISTEN state
 * and bound to 0.0.0.0 or ::; port 22 and the agent's own port are left out, like upstream.
 * Ports bound to a specific address (127.0.0.1) are not reported. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "misc.h"
#include "proc.h"

#define PORTS_CACHE_MS 100
#define TCP_LISTEN     0x0A

struct ports_cache {
	pthread_mutex_t mu;
	bool valid;     /* (mu) */
	uint64_t at_ms; /* (mu) monotonic time of the last read */
	time_t at;      /* (mu) wall clock of the last read */
	int n;          /* (mu) */
	uint16_t ports[65536];
};

static struct ports_cache cache = {.mu = PTHREAD_MUTEX_INITIALIZER};

void ports_cache_init(struct agent *ag)
{
	ag->ports = &cache;
}

static bool all_zero(const char *hex)
{
	for (; *hex; hex++)
		if (*hex != '0')
			return false;
	return true;
}

static void scan(const char *file, uint8_t *seen)
{
	FILE *f = fopen(file, "re");
	if (!f)
		return;
	char line[512];
	if (!fgets(line, sizeof(line), f)) { /* header */
		fclose(f);
		return;
	}
	while (fgets(line, sizeof(line), f)) {
		char addr[64];
		unsigned port, state;
		if (sscanf(line, " %*d: %63[0-9A-Fa-f]:%x %*s %x", addr, &port, &state) != 3)
			continue;
		if (state != TCP_LISTEN || !all_zero(addr) || port > 65535)
			continue;
		seen[port / 8] |= (uint8_t)(1u << (port % 8));
	}
	fclose(f);
}

static void refresh(struct ports_cache *c, int own_port)
{
	static uint8_t seen[65536 / 8];
	memset(seen, 0, sizeof(seen));
	scan("/proc/net/tcp", seen);
	scan("/proc/net/tcp6", seen);
	c->n = 0;
	for (unsigned port = 1; port < 65536; port++) {
		if (!(seen[port / 8] & (1u << (port % 8))))
			continue;
		if (port == 22 || (int)port == own_port)
			continue;
		c->ports[c->n++] = (uint16_t)port;
	}
	c->at_ms = dbx_now_ms();
	c->at = time(NULL);
	c->valid = true;
}

void ports_fn(struct req *r)
{
	struct agent *ag = req_agent(r);
	struct ports_cache *c = ag->ports ? ag->ports : &cache;
	cJSON *arr = cJSON_CreateArray();
	pthread_mutex_lock(&c->mu);
	/* refresh() uses static scratch space: it runs under the lock only. */
	if (!c->valid || dbx_now_ms() - c->at_ms >= PORTS_CACHE_MS)
		refresh(c, ag->bound_port);
	for (int i = 0; i < c->n; i++)
		cJSON_AddItemToArray(arr, cJSON_CreateNumber(c->ports[i]));
	time_t at = c->at;
	pthread_mutex_unlock(&c->mu);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "ports", arr);
	cJSON_AddNumberToObject(o, "lastUpdatedAt", (double)at);
	req_reply_ok(r, o);
}
