/* Removing a test's scratch directory tree. Header-only: each test is one translation unit. */
#ifndef TL_FS_FIXTURE_H
#define TL_FS_FIXTURE_H

#include <dirent.h>
#include <stdio.h>
#include <string.h>

static void rm_rf(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        closedir(d);
    }
    remove(path);
}

#endif
