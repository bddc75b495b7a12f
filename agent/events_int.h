/* events_int.h: between the event ring (events.c) and the inotify watcher (watch.c).
 *
 * The watcher runs on its own thread, the only one that touches the file system for events;
 * it hands finished events to the ring with events_publish(), which numbers them and wakes the
 * service thread. Nothing here may be called by the service thread except watcher_start/stop. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "agent.h"

struct events;
struct watcher;

/* Watcher thread: appends the events in @objs (each {"kind","path",...}; "boot" is added) to
 * the ring in order, each with the next seq, and wakes the service thread. @objs stay the
 * caller's. */
void events_publish(struct events *e, cJSON *const *objs, size_t n);
void events_publish_overflow(struct events *e);
/* Watcher thread: the largest file whose content goes into its event (0: no client wants
 * content), and whether @st is a version written through the API (then none goes). An
 * event object may carry the content as a "data" string (base64); events_publish() keeps it
 * beside the frame and sends it only to the clients that asked. */
size_t events_data_max(void);
bool events_written_by_api(const struct stat *st);

/* Service thread: start the watcher thread over the workspace of @ag / stop and free it
 * (joins the thread; NULL-safe). */
int watcher_start(struct agent *ag, struct events *e, struct watcher **ret);
void watcher_stop(struct watcher *w);
