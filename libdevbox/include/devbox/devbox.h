/* SPDX-License-Identifier: Apache-2.0 */
/* libdevbox — the client library for devboxes.  See the individual headers. */
#ifndef DEVBOX_DEVBOX_H
#define DEVBOX_DEVBOX_H

#include <devbox/common.h>
#include <devbox/client.h>
#include <devbox/fs.h>
#include <devbox/watch.h>
#include <devbox/exec.h>
#include <devbox/transfer.h>
#include <devbox/provider.h>

#endif
