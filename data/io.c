/* io: the base I/O layer (tl_io.h): crash-safe file-system helpers (temporary name, fsync, rename into place), a
 * recursive remove that never follows symbolic links, bounded whole-file reads of regular files only, path
 * confinement and the monotonic clock. */
#include "data/tl_io.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

tl_status tl_path_join(char *out, size_t cap, const char *a, const char *b, tl_error *err) {
    size_t la = strlen(a);
    const char *sep = (la > 0 && a[la - 1] == '/') ? "" : "/";
    if (la == 0) sep = "";
    int k = snprintf(out, cap, "%s%s%s", a, sep, b);
    if (k < 0 || (size_t)k >= cap)
        return tl_fail(err, TL_ERR_RUNTIME, "%s/%s: path longer than %zu bytes", a, b, cap - 1);
    return TL_OK;
}

tl_status tl_path_trim(const char *path, char *out, size_t cap, tl_error *err) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    if (n + 1 > cap) return tl_fail(err, TL_ERR_RUNTIME, "%s: path longer than %zu bytes", path, cap - 1);
    memcpy(out, path, n);
    out[n] = '\0';
    return TL_OK;
}

tl_status tl_path_parent(const char *path, char *out, size_t cap, tl_error *err) {
    char buf[TL_PATH_MAX];
    TL_TRY(tl_path_trim(path, buf, sizeof buf, err));
    char *slash = strrchr(buf, '/');
    const char *parent;
    if (!slash) {
        parent = ".";
    } else if (slash == buf) {
        parent = "/";
    } else {
        *slash = '\0';
        /* "a//b" -> "a" */
        while (slash > buf + 1 && slash[-1] == '/') *--slash = '\0';
        parent = buf;
    }
    size_t n = strlen(parent);
    if (n + 1 > cap) return tl_fail(err, TL_ERR_RUNTIME, "%s: parent path longer than %zu bytes", path, cap - 1);
    memmove(out, parent, n + 1);
    return TL_OK;
}

int tl_path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

int tl_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int tl_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

tl_status tl_mkdir_p(const char *path, tl_error *err) {
    char buf[TL_PATH_MAX];
    if (!path || !*path) return tl_fail(err, TL_ERR_INPUT, "empty directory path");
    TL_TRY(tl_path_trim(path, buf, sizeof buf, err));
    /* Create each prefix in turn; EEXIST is fine as long as it is a directory. */
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, 0755) != 0) {
            int e = errno;
            if (e != EEXIST) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create directory: %s", buf, strerror(e));
            if (!tl_is_dir(buf))
                return tl_fail(err, TL_ERR_RUNTIME, "%s: exists and is not a directory", buf);
        }
        *p = saved;
        if (saved == '\0') break;
    }
    return TL_OK;
}

tl_status tl_read_file(const char *path, size_t max_bytes, char **out, size_t *n, tl_error *err) {
    *out = NULL;
    if (n) *n = 0;
    FILE *f;
    TL_TRY(tl_fopen_regular(path, NULL, &f, NULL, err)); /* a FIFO or a device would block or never end */
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    for (;;) {
        if (len == cap) {
            if (cap > max_bytes) break;
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + len, 1, cap - len, f);
        len += k;
        if (k == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: read error", path);
    }
    if (len > max_bytes) {
        free(buf);
        return tl_fail(err, TL_ERR_INPUT, "%s: larger than %zu bytes", path, max_bytes);
    }
    buf[len] = '\0';
    *out = buf;
    if (n) *n = len;
    return TL_OK;
}

static tl_status fsync_open(const char *path, int flags, const char *what, tl_error *err) {
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot open %s for fsync: %s", path, what, strerror(errno));
    tl_status s = TL_OK;
    /* Some file systems refuse fsync on directories (EINVAL); nothing more can be done there. */
    if (fsync(fd) != 0 && errno != EINVAL)
        s = tl_fail(err, TL_ERR_RUNTIME, "%s: fsync of %s failed: %s", path, what, strerror(errno));
    close(fd);
    return s;
}

tl_status tl_fsync_path(const char *path, tl_error *err) { return fsync_open(path, O_RDONLY, "file", err); }

tl_status tl_fsync_dir(const char *path, tl_error *err) {
    return fsync_open(path, O_RDONLY | O_DIRECTORY, "directory", err);
}

/* Removes entry `name` of the directory open as dirfd. `top` is the path of the tree's root, for messages. */
static tl_status remove_at(int dirfd, const char *name, const char *top, int depth, tl_error *err) {
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return TL_OK;
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot stat '%s': %s", top, name, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT)
            return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot remove '%s': %s", top, name, strerror(errno));
        return TL_OK;
    }
    if (depth > 256) return tl_fail(err, TL_ERR_RUNTIME, "%s: directory tree deeper than 256 levels", top);
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot open '%s': %s", top, name, strerror(errno));
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot list '%s': %s", top, name, strerror(errno));
    }
    /* Collect the names first, then remove: readdir over a directory being changed may skip entries. */
    tl_status s = TL_OK;
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno != 0) s = tl_fail(err, TL_ERR_RUNTIME, "%s: cannot list '%s': %s", top, name, strerror(errno));
            break;
        }
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn) {
                s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory listing '%s'", top, name);
                break;
            }
            names = nn;
            cap = nc;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) {
            s = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory listing '%s'", top, name);
            break;
        }
        n++;
    }
    for (size_t i = 0; i < n && s == TL_OK; i++) s = remove_at(fd, names[i], top, depth + 1, err);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    closedir(d); /* closes fd */
    if (s != TL_OK) return s;
    if (unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot remove directory '%s': %s", top, name, strerror(errno));
    return TL_OK;
}

tl_status tl_remove_tree(const char *path, tl_error *err) {
    if (!path || !*path) return tl_fail(err, TL_ERR_RUNTIME, "remove: empty path");
    if (!tl_path_exists(path)) return TL_OK;
    return remove_at(AT_FDCWD, path, path, 0, err);
}

tl_status tl_rename_into_place(const char *from, const char *to, tl_error *err) {
    if (rename(from, to) != 0)
        return tl_fail(err, TL_ERR_RUNTIME, "cannot rename %s to %s: %s", from, to, strerror(errno));
    char pto[TL_PATH_MAX], pfrom[TL_PATH_MAX];
    TL_TRY(tl_path_parent(to, pto, sizeof pto, err));
    TL_TRY(tl_path_parent(from, pfrom, sizeof pfrom, err));
    TL_TRY(tl_fsync_dir(pto, err));
    if (strcmp(pto, pfrom) != 0) TL_TRY(tl_fsync_dir(pfrom, err));
    return TL_OK;
}

tl_status tl_replace_dir(const char *tmp_dir, const char *final_dir, tl_error *err) {
    char fin[TL_PATH_MAX], parent[TL_PATH_MAX], old[TL_PATH_MAX];
    TL_TRY(tl_path_trim(final_dir, fin, sizeof fin, err));
    if (!tl_path_exists(fin)) return tl_rename_into_place(tmp_dir, fin, err);

    TL_TRY(tl_path_parent(fin, parent, sizeof parent, err));
    const char *base = strrchr(fin, '/');
    base = base ? base + 1 : fin;
    char oldname[512];
    /* a free name: an existing one (a leftover of a crash, or anything else) is never removed here */
    for (int n = 0;; n++) {
        int k = n ? snprintf(oldname, sizeof oldname, ".old-%s-%ld-%d", base, (long)getpid(), n)
                  : snprintf(oldname, sizeof oldname, ".old-%s-%ld", base, (long)getpid());
        if (k < 0 || (size_t)k >= sizeof oldname) return tl_fail(err, TL_ERR_RUNTIME, "%s: name too long", fin);
        TL_TRY(tl_path_join(old, sizeof old, parent, oldname, err));
        if (!tl_path_exists(old)) break;
        if (n == 1000) return tl_fail(err, TL_ERR_RUNTIME, "%s: no free name to move it aside", fin);
    }

    if (rename(fin, old) != 0)
        return tl_fail(err, TL_ERR_RUNTIME, "cannot move %s aside to %s: %s", fin, old, strerror(errno));
    if (rename(tmp_dir, fin) != 0) {
        int e = errno;
        /* Put the old one back so the caller is left where it started. */
        if (rename(old, fin) != 0)
            return tl_fail(err, TL_ERR_RUNTIME, "cannot rename %s to %s: %s (and restoring %s from %s failed: %s)",
                           tmp_dir, fin, strerror(e), fin, old, strerror(errno));
        return tl_fail(err, TL_ERR_RUNTIME, "cannot rename %s to %s: %s", tmp_dir, fin, strerror(e));
    }
    TL_TRY(tl_fsync_dir(parent, err));
    return tl_remove_tree(old, err);
}

int tl_json_int(double d, int64_t lo, int64_t hi, int64_t *out) {
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) return 0;
    *out = (int64_t)d;
    return 1;
}

int tl_plain_name(const char *name) {
    return name && name[0] && name[0] != '.' && !strchr(name, '/') && strlen(name) < 256;
}

tl_status tl_path_inside(const char *root, const char *path, const char *what, tl_error *err) {
    char *r = realpath(root, NULL);
    if (!r) return tl_fail(err, TL_ERR_INPUT, "%s: %s: cannot resolve: %s", what, root, strerror(errno));
    char *q = realpath(path, NULL);
    if (!q) {
        int e = errno;
        free(r);
        return tl_fail(err, TL_ERR_INPUT, "%s: %s: cannot resolve: %s", what, path, strerror(e));
    }
    size_t n = strlen(r);
    int inside = strncmp(q, r, n) == 0 && (q[n] == '/' || (n == 1 && r[0] == '/')) && q[n] != '\0';
    tl_status s = inside ? TL_OK
                         : tl_fail(err, TL_ERR_INPUT, "%s: %s resolves to %s, outside %s", what, path, q, r);
    free(r);
    free(q);
    return s;
}

double tl_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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
