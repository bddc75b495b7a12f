#include "agent.h"
const struct route files_routes[] = {
	{NULL, NULL, NULL, 0, NULL},
};
