/* placement.c — hwloc placement (being written). */
