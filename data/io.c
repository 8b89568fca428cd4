/* io: see tl_io.h. */
#include "tl_io.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind_of(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m) || S_ISBLK(m)) return "a device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

tl_status tl_open_regular(const char *path, const char *what, int *fd, int64_t *size, tl_error *err) {
    *fd = -1;
    const char *w = what ? what : "", *sep = what ? " " : "";
    int f = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (f < 0) {
        int e = errno;
        return tl_fail(err, e == ENOMEM || e == EMFILE || e == ENFILE ? TL_ERR_RUNTIME : TL_ERR_INPUT,
                       "%s: cannot open%s%s: %s", path, sep, w, strerror(e));
    }
    struct stat st;
    if (fstat(f, &st) != 0) {
        int e = errno;
        close(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot stat%s%s: %s", path, sep, w, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(f);
        return tl_fail(err, TL_ERR_INPUT, "%s: is %s, expected a regular file%s%s", path, kind_of(st.st_mode),
                       what ? " for the " : "", w);
    }
    int fl = fcntl(f, F_GETFL);
    if (fl < 0 || fcntl(f, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: fcntl: %s", path, strerror(e));
    }
    *fd = f;
    if (size) *size = (int64_t)st.st_size;
    return TL_OK;
}

tl_status tl_fopen_regular(const char *path, const char *what, FILE **out, int64_t *size, tl_error *err) {
    *out = NULL;
    int fd;
    TL_TRY(tl_open_regular(path, what, &fd, size, err));
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: fdopen: %s", path, strerror(e));
    }
    *out = f;
    return TL_OK;
}
