/* world.c — MPI world and communicators (being written). */
