/* file.c — opening input files safely: only regular files are read. A FIFO
 * with no writer blocks open() forever, and /dev/zero or /dev/urandom never
 * reach end of file; dpep reads a path given in a config or on the command
 * line only after checking what it is, without blocking. */
#include "dpep_base.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *dpep_file_kind_name(unsigned mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a FIFO (named pipe)";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    case S_IFSOCK: return "a socket";
    default: return "not a regular file";
    }
}

int dpep_open_regular(const char *path, int64_t max_bytes, int64_t *size, char *why, size_t why_len)
{
    /* O_NONBLOCK: opening a FIFO without a writer returns at once instead
     * of waiting for one; it is refused below. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(why, why_len, "cannot open: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(why, why_len, "cannot stat: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, why_len, "is %s (expected a regular file)", dpep_file_kind_name(st.st_mode));
        close(fd);
        return -1;
    }
    if (max_bytes > 0 && (int64_t)st.st_size > max_bytes) {
        snprintf(why, why_len, "is %lld bytes (expected at most %lld)", (long long)st.st_size,
                 (long long)max_bytes);
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        snprintf(why, why_len, "fcntl: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (size) *size = (int64_t)st.st_size;
    return fd;
}

FILE *dpep_fopen_regular(const char *path, int64_t max_bytes, char *why, size_t why_len)
{
    int fd = dpep_open_regular(path, max_bytes, NULL, why, why_len);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        snprintf(why, why_len, "fdopen: %s", strerror(errno));
        close(fd);
    }
    return f;
}
