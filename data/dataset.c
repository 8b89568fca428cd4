/* dataset: opens an HDF5 SFT dataset (schema in docs/data-format.md), reads every array into memory and
 * validates all of it before returning, so the batcher and trainer can index it without further checks. The
 * reading and checking pieces common to every kind (root attributes, users table, typed arrays, offsets,
 * token ranges) are exported through tl_dataset.h for the preference reader (pref_dataset.c).
 *
 * The file is untrusted. Before any object is opened, each component of its path must be a hard link (a soft
 * or external link is refused before libhdf5 follows it); a dataset must be contiguous or chunked with its
 * data in this file (no compact, virtual or external storage) and only the deflate, shuffle and fletcher32
 * filters; before anything is allocated its declared size must be stored in the file (contiguous: allocated,
 * inside the file; chunked: stored chunk bytes within the file size and covering the declared bytes, up to
 * deflate's 1032:1) and its chunks no larger than the data beyond 1 MiB. A file where nothing can be trained
 * is refused too, so train, eval and inspect agree.
 *
 * libhdf5 itself cannot be made safe from here: on a corrupt superblock, object header, B-tree or heap it may
 * crash or loop forever (a single changed byte in a valid 11 KB file does either; see tests/bad/hdf5.sh). The
 * design chosen: every open (tl_sft_open, tl_pref_open, tl_h5_kind) first runs the same whole validation in a
 * forked child with a time limit (tl_h5_isolated) and reads the file in-process only after the child reported
 * success; a signal, an exit without a report or the time limit becomes one line naming the file. The
 * alternatives were weaker: checking the file format by hand before libhdf5 would mean re-implementing its
 * parser, and a signal handler or alarm in-process cannot resume a corrupted libhdf5. The price is a fork
 * and a second read (about 1 ms on a small file; opening a large one costs about twice as much), which
 * TAILOR_HDF5_ISOLATE=0 skips for trusted files.
 *
 * HDF5 prints its own error stack by default; that is switched off for the duration of the open (and the
 * caller's setting restored) so every failure reaches the user as one line "<file>: <object>: <problem>". */
#include "data/tl_dataset.h"
#include "data/tl_io.h"
#include "kernels/tl_text.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct tl_h5_reader {
    const char *path;
    hid_t file;
    tl_error *err; /* where the static helpers report; set by each exported entry point */
    H5E_auto2_t old_fn;
    void *old_data;
    int restore;
    int64_t file_size;  /* st_size when opened: the bound of every declared size */
    hsize_t userblock;  /* bytes before the HDF5 data (addresses are relative to its end) */
};
typedef struct tl_h5_reader rd_ctx;

/* A short human name of an HDF5 type for "expected ..." messages. */
static void type_name(hid_t t, char *buf, size_t n) {
    H5T_class_t c = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    switch (c) {
    case H5T_INTEGER:
        snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", size * 8);
        break;
    case H5T_FLOAT: snprintf(buf, n, "float%zu", size * 8); break;
    case H5T_STRING: snprintf(buf, n, "string"); break;
    case H5T_COMPOUND: snprintf(buf, n, "compound"); break;
    case H5T_ENUM: snprintf(buf, n, "enum"); break;
    case H5T_ARRAY: snprintf(buf, n, "array"); break;
    case H5T_VLEN: snprintf(buf, n, "vlen"); break;
    case H5T_OPAQUE: snprintf(buf, n, "opaque"); break;
    case H5T_BITFIELD: snprintf(buf, n, "bitfield"); break;
    case H5T_REFERENCE: snprintf(buf, n, "reference"); break;
    case H5T_TIME: snprintf(buf, n, "time"); break;
    default: snprintf(buf, n, "unknown type"); break;
    }
}

/* Whether the absolute path `name` exists, walking it one component at a time ("/sft", then "/sft/tokens") and
 * requiring each existing component to be a hard link: a soft link could point anywhere in the file and an
 * external link (or a user-defined one) into another file, and libhdf5 follows both silently on open, so the
 * walk stops at the first link that is not hard, before anything traverses it. A missing component means
 * "missing" (H5Lexists would fail rather than answer 0 on a missing parent, and would traverse the parents). */
static tl_status find_object(rd_ctx *c, const char *name, int *exists) {
    *exists = 0;
    char prefix[256];
    size_t n = strlen(name);
    if (n >= sizeof prefix || name[0] != '/') return TL_OK;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && name[i] != '/') continue;
        memcpy(prefix, name, i);
        prefix[i] = '\0';
        if (H5Lexists(c->file, prefix, H5P_DEFAULT) <= 0) return TL_OK;
        H5L_info_t li;
        if (H5Lget_info(c->file, prefix, &li, H5P_DEFAULT) < 0)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its link", c->path, prefix);
        if (li.type == H5L_TYPE_SOFT)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: is a soft link, expected the object itself (a hard link)",
                           c->path, prefix);
        if (li.type != H5L_TYPE_HARD)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: is an external or user-defined link (data in another "
                           "file), expected the object itself stored in this file", c->path, prefix);
    }
    *exists = 1;
    return TL_OK;
}

/* The storage of an opened dataset must lie inside this file and be readable by the filters tailor trusts:
 * contiguous or chunked layout (not compact, not virtual: a virtual dataset maps other files), no external
 * storage, and on chunked data only the deflate, shuffle and fletcher32 filters (any other one, e.g. h5py's
 * lzf or a plugin, is refused by name rather than failing or loading a plugin at read time). *deflated says
 * whether deflate is among them (the size check then allows for compression). */
static tl_status check_layout(rd_ctx *c, const char *name, hid_t d, int *deflated) {
    *deflated = 0;
    hid_t dcpl = H5Dget_create_plist(d);
    if (dcpl < 0) return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its storage properties", c->path, name);
    tl_status st = TL_OK;
    H5D_layout_t lay = H5Pget_layout(dcpl);
    int n_ext = H5Pget_external_count(dcpl);
    if (lay == H5D_VIRTUAL)
        st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: virtual dataset (maps data of other files), expected contiguous "
                     "or chunked storage in this file", c->path, name);
    else if (lay == H5D_COMPACT)
        st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: compact layout, expected contiguous or chunked storage",
                     c->path, name);
    else if (lay != H5D_CONTIGUOUS && lay != H5D_CHUNKED)
        st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: unknown storage layout %d, expected contiguous or chunked",
                     c->path, name, (int)lay);
    else if (n_ext != 0)
        st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: external storage (data kept in %d other file(s)), expected the "
                     "data stored in this file", c->path, name, n_ext);
    int nf = st == TL_OK && lay == H5D_CHUNKED ? H5Pget_nfilters(dcpl) : 0;
    if (nf < 0) st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its filter pipeline", c->path, name);
    for (int i = 0; i < nf && st == TL_OK; i++) {
        unsigned flags = 0, cfg = 0;
        size_t n_cd = 0;
        char fname[64] = "";
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &n_cd, NULL, sizeof fname, fname, &cfg);
        fname[sizeof fname - 1] = '\0';
        if (id == H5Z_FILTER_DEFLATE) *deflated = 1;
        else if (id != H5Z_FILTER_SHUFFLE && id != H5Z_FILTER_FLETCHER32)
            st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: filter %d (\"%.40s\") is not supported, expected only deflate "
                         "(gzip), shuffle or fletcher32", c->path, name, (int)id, fname);
    }
    H5Pclose(dcpl);
    return st;
}

/* Before allocating for n elements of `width` bytes, checks that the file really holds them: a few-KB file may
 * declare any length, and libhdf5 reads unallocated storage as fill values, so the declared size alone would
 * make tailor allocate whatever it says. Contiguous data must be allocated, in full, inside the file (its
 * address range ends before the file does). Chunked data must have its chunks stored: the bytes stored for
 * it (the sum of its chunks, H5Dget_storage_size) must not exceed the file's size and must cover the declared
 * bytes, or 1/1032 of them when deflate is on (1032:1 is the most deflate can compress). Anything else is
 * TL_ERR_INPUT naming the dataset with the declared and the stored bytes. */
static tl_status check_size(rd_ctx *c, const char *name, hid_t d, int64_t n, size_t width, int deflated) {
    if (n == 0) return TL_OK;
    if (width == 0 || (uint64_t)n > (uint64_t)INT64_MAX / width)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: %lld elements of %zu bytes is too large", c->path, name,
                       (long long)n, width);
    uint64_t declared = (uint64_t)n * width, fsize = (uint64_t)c->file_size;
    uint64_t stored = (uint64_t)H5Dget_storage_size(d);
    hid_t dcpl = H5Dget_create_plist(d);
    H5D_layout_t lay = dcpl >= 0 ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
    if (dcpl >= 0) H5Pclose(dcpl);
    if (lay == H5D_CONTIGUOUS) {
        haddr_t off = H5Dget_offset(d);
        if (off == HADDR_UNDEF || stored < declared)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: declares %llu bytes (%lld elements of %zu) but the file "
                           "stores %llu for it, expected all of its data in the file", c->path, name,
                           (unsigned long long)declared, (long long)n, width, (unsigned long long)stored);
        uint64_t base = (uint64_t)c->userblock;
        if ((uint64_t)off > fsize || base > fsize - (uint64_t)off || declared > fsize - (uint64_t)off - base)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: declares %llu bytes at offset %llu but the file has only "
                           "%llu bytes", c->path, name, (unsigned long long)declared, (unsigned long long)off,
                           (unsigned long long)fsize);
        return TL_OK;
    }
    if (lay != H5D_CHUNKED) return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its layout", c->path, name);
    /* libhdf5 allocates a whole chunk to read (and inflate) any part of it: a chunk larger than the dataset
     * (possible with an unlimited maximum size) is bounded too, beyond 1 MiB. */
    hsize_t cdim[1] = {0};
    dcpl = H5Dget_create_plist(d);
    int crank = dcpl >= 0 ? H5Pget_chunk(dcpl, 1, cdim) : -1;
    if (dcpl >= 0) H5Pclose(dcpl);
    if (crank != 1 || cdim[0] == 0)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its chunk size", c->path, name);
    uint64_t chunk = (uint64_t)cdim[0] > UINT64_MAX / width ? UINT64_MAX : (uint64_t)cdim[0] * width;
    if (chunk > declared && chunk > ((uint64_t)1 << 20))
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: chunks of %llu bytes for %llu bytes of data, expected chunks no "
                       "larger than the dataset or 1 MiB", c->path, name, (unsigned long long)chunk,
                       (unsigned long long)declared);
    const uint64_t ratio = deflated ? 1032 : 1;
    if (stored > fsize || stored < declared / ratio + (declared % ratio != 0))
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: declares %llu bytes (%lld elements of %zu) but the file "
                       "stores %llu for it (file size %llu%s), expected its chunks stored in the file", c->path,
                       name, (unsigned long long)declared, (long long)n, width, (unsigned long long)stored,
                       (unsigned long long)fsize, deflated ? ", deflate expands at most 1032 times" : "");
    return TL_OK;
}

/* Opens a rank-1 dataset (a hard link with trusted storage: find_object, check_layout) and returns it with its
 * length and whether it is deflated. */
static tl_status open_1d(rd_ctx *c, const char *name, hid_t *dset, int64_t *len, int *deflated) {
    *dset = H5I_INVALID_HID;
    int exists = 0;
    TL_TRY(find_object(c, name, &exists));
    if (!exists) return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: missing dataset", c->path, name);
    hid_t d = H5Dopen2(c->file, name, H5P_DEFAULT);
    if (d < 0) return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: not a dataset", c->path, name);
    tl_status lst = check_layout(c, name, d, deflated);
    if (lst != TL_OK) {
        H5Dclose(d);
        return lst;
    }
    hid_t s = H5Dget_space(d);
    if (s < 0) {
        H5Dclose(d);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its dataspace", c->path, name);
    }
    int rank = H5Sget_simple_extent_ndims(s);
    hsize_t dims[1] = {0};
    int ok = rank == 1 && H5Sget_simple_extent_dims(s, dims, NULL) == 1;
    H5Sclose(s);
    if (!ok) {
        H5Dclose(d);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: rank %d, expected a 1-D array", c->path, name, rank);
    }
    if (dims[0] > (hsize_t)INT64_MAX / 8) {
        H5Dclose(d);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: length %llu is too large", c->path, name,
                       (unsigned long long)dims[0]);
    }
    *dset = d;
    *len = (int64_t)dims[0];
    return TL_OK;
}

/* Opens a rank-1 signed integer dataset of exactly `width` bytes per element (4 or 8) after every check short of
 * reading it (links, storage, dtype, declared size against the file). */
static tl_status open_int_1d(rd_ctx *c, const char *name, size_t width, hid_t *dset, int64_t *len) {
    *dset = H5I_INVALID_HID;
    hid_t d;
    int deflated = 0;
    TL_TRY(open_1d(c, name, &d, len, &deflated));
    hid_t t = H5Dget_type(d);
    if (t < 0) {
        H5Dclose(d);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its dtype", c->path, name);
    }
    int good = H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) == width && H5Tget_sign(t) == H5T_SGN_2;
    char tn[32];
    type_name(t, tn, sizeof tn);
    H5Tclose(t);
    if (!good) {
        H5Dclose(d);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: dtype %s, expected int%zu", c->path, name, tn, width * 8);
    }
    tl_status sst = check_size(c, name, d, *len, width, deflated);
    if (sst != TL_OK) {
        H5Dclose(d);
        return sst;
    }
    *dset = d;
    return TL_OK;
}

/* Reads a rank-1 signed integer dataset of exactly `width` bytes per element (4 or 8) into a new array. */
static tl_status read_int_1d(rd_ctx *c, const char *name, size_t width, void **out, int64_t *len) {
    *out = NULL;
    hid_t d;
    TL_TRY(open_int_1d(c, name, width, &d, len));
    size_t n = (size_t)*len;
    void *buf = malloc((n ? n : 1) * width);
    if (!buf) {
        H5Dclose(d);
        return tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: out of memory for %zu elements", c->path, name, n);
    }
    herr_t r = n ? H5Dread(d, width == 4 ? H5T_NATIVE_INT32 : H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf)
                 : 0;
    H5Dclose(d);
    if (r < 0) {
        free(buf);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: read failed (corrupt file or unsupported filter)", c->path,
                       name);
    }
    *out = buf;
    return TL_OK;
}

/* Checks that s[0..len) is well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF). */
int tl_utf8_valid(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char b = s[i];
        size_t k;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            k = 1;
            cp = b & 0x1F;
        } else if ((b & 0xF0) == 0xE0) {
            k = 2;
            cp = b & 0x0F;
        } else if ((b & 0xF8) == 0xF0) {
            k = 3;
            cp = b & 0x07;
        } else {
            return 0;
        }
        if (i + k >= len) return 0; /* truncated sequence */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

/* Turns one raw string (fixed-length bytes or a variable-length C string) into an owned C string.
 * Trailing NULs are padding; a NUL followed by other bytes cannot be represented as a C string and is an
 * error, except under H5T_STR_NULLTERM where everything after the terminator is padding. */
static tl_status own_string(rd_ctx *c, const char *what, int64_t index, const char *raw, size_t size, int nullterm,
                            char **out) {
    size_t len = size;
    if (nullterm) {
        const char *z = memchr(raw, 0, size);
        if (z) len = (size_t)(z - raw);
    } else {
        while (len > 0 && raw[len - 1] == '\0') len--;
        if (memchr(raw, 0, len))
            return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: string %lld contains a NUL byte", c->path, what,
                           (long long)index);
    }
    if (!tl_utf8_valid((const unsigned char *)raw, len))
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: string %lld is not valid UTF-8", c->path, what,
                       (long long)index);
    char *s = malloc(len + 1);
    if (!s) return tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: out of memory", c->path, what);
    memcpy(s, raw, len);
    s[len] = '\0';
    *out = s;
    return TL_OK;
}

/* Reads n strings from a dataset (is_attr = 0) or attribute (is_attr = 1) whose file type is `ftype` and
 * dataspace `space`. Fixed-length and variable-length strings are both accepted; the bytes are read without
 * conversion (memory type = file type's size, padding and character set) so nothing is altered. */
static tl_status read_strings(rd_ctx *c, const char *what, hid_t obj, int is_attr, hid_t ftype, hid_t space,
                              size_t n, char **out) {
    if (H5Tget_class(ftype) != H5T_STRING) {
        char tn[32];
        type_name(ftype, tn, sizeof tn);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: dtype %s, expected strings", c->path, what, tn);
    }
    htri_t vl = H5Tis_variable_str(ftype);
    H5T_cset_t cset = H5Tget_cset(ftype);
    H5T_str_t pad = H5Tget_strpad(ftype);
    size_t fsize = H5Tget_size(ftype);
    if (vl < 0 || cset < 0 || pad < 0 || fsize == 0)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: unreadable string type", c->path, what);
    hid_t mt = H5Tcopy(H5T_C_S1);
    if (mt < 0) return tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: H5Tcopy failed", c->path, what);
    herr_t r = H5Tset_size(mt, vl ? H5T_VARIABLE : fsize);
    if (r >= 0) r = H5Tset_cset(mt, cset);
    if (r >= 0 && !vl) r = H5Tset_strpad(mt, pad);
    if (r < 0) {
        H5Tclose(mt);
        return tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: cannot build the string memory type", c->path, what);
    }
    tl_status st = TL_OK;
    if (n == 0) {
        H5Tclose(mt);
        return TL_OK;
    }
    if (vl) {
        char **ptrs = calloc(n, sizeof *ptrs);
        if (!ptrs) {
            H5Tclose(mt);
            return tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: out of memory", c->path, what);
        }
        r = is_attr ? H5Aread(obj, mt, ptrs) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs);
        if (r < 0) {
            st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: read failed", c->path, what);
        } else {
            for (size_t i = 0; i < n && st == TL_OK; i++) {
                const char *p = ptrs[i] ? ptrs[i] : "";
                st = own_string(c, what, (int64_t)i, p, strlen(p), 1, &out[i]);
            }
            /* Variable-length strings are allocated by HDF5 and must be given back through it. */
            if (H5Dvlen_reclaim(mt, space, H5P_DEFAULT, ptrs) < 0 && st == TL_OK)
                st = tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: cannot release variable-length strings", c->path,
                             what);
        }
        free(ptrs);
    } else {
        /* bounded by what the file can hold (deflate expands at most 1032 times), before allocating: an
         * attribute's declared string size is not checked anywhere else */
        uint64_t cap = (uint64_t)c->file_size > UINT64_MAX / 1032 ? UINT64_MAX : (uint64_t)c->file_size * 1032;
        if ((uint64_t)fsize > cap / n) {
            H5Tclose(mt);
            return tl_fail(c->err, TL_ERR_INPUT, "%s: %s: %zu strings of %zu bytes is more than a file of %lld bytes "
                           "can hold", c->path, what, n, fsize, (long long)c->file_size);
        }
        char *buf = malloc(n * fsize);
        if (!buf) {
            H5Tclose(mt);
            return tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: out of memory", c->path, what);
        }
        r = is_attr ? H5Aread(obj, mt, buf) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        if (r < 0) st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: read failed", c->path, what);
        for (size_t i = 0; i < n && st == TL_OK; i++)
            st = own_string(c, what, (int64_t)i, buf + i * fsize, fsize, pad == H5T_STR_NULLTERM, &out[i]);
        free(buf);
    }
    H5Tclose(mt);
    return st;
}

/* Reads a rank-1 string dataset into a new array of owned strings (entries NULL-initialised so a partial
 * result can be freed). */
static tl_status read_string_1d(rd_ctx *c, const char *name, char ***out, int64_t *len) {
    *out = NULL;
    hid_t d;
    int deflated = 0;
    TL_TRY(open_1d(c, name, &d, len, &deflated));
    size_t n = (size_t)*len;
    hid_t t = H5Dget_type(d);
    hid_t s = H5Dget_space(d);
    char **arr = NULL;
    tl_status st;
    if (t < 0 || s < 0)
        st = tl_fail(c->err, TL_ERR_INPUT, "%s: %s: cannot read its dtype", c->path, name);
    else /* a stored string is at least its size in the file (a fixed string, or a variable one's heap id) */
        st = check_size(c, name, d, *len, H5Tget_size(t), deflated);
    if (st == TL_OK && !(arr = calloc(n ? n : 1, sizeof *arr)))
        st = tl_fail(c->err, TL_ERR_RUNTIME, "%s: %s: out of memory", c->path, name);
    if (st == TL_OK) st = read_strings(c, name, d, 0, t, s, n, arr);
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    if (st != TL_OK && arr) {
        for (size_t i = 0; i < n; i++) free(arr[i]);
        free(arr);
        arr = NULL;
    }
    *out = arr;
    return st;
}

/* Opens a root attribute holding a single value; *present = 0 when it is absent. */
static tl_status open_scalar_attr(rd_ctx *c, const char *name, hid_t *attr, hid_t *type, hid_t *space,
                                  int *present) {
    *attr = *type = *space = H5I_INVALID_HID;
    htri_t ex = H5Aexists(c->file, name);
    if (ex < 0) return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: cannot query", c->path, name);
    *present = ex > 0;
    if (!ex) return TL_OK;
    *attr = H5Aopen(c->file, name, H5P_DEFAULT);
    if (*attr < 0) return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: cannot open", c->path, name);
    *type = H5Aget_type(*attr);
    *space = H5Aget_space(*attr);
    if (*type < 0 || *space < 0)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: cannot read its type", c->path, name);
    hssize_t np = H5Sget_simple_extent_npoints(*space);
    if (np != 1)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: %lld values, expected a single value", c->path,
                       name, (long long)np);
    return TL_OK;
}

static void close_attr(hid_t a, hid_t t, hid_t s) {
    if (s >= 0) H5Sclose(s);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
}

/* Reads an integer root attribute (any integer width; converted to int64). */
static tl_status read_int_attr(rd_ctx *c, const char *name, int64_t *val, int *present) {
    hid_t a, t, s;
    tl_status st = open_scalar_attr(c, name, &a, &t, &s, present);
    if (st == TL_OK && *present) {
        if (H5Tget_class(t) != H5T_INTEGER) {
            char tn[32];
            type_name(t, tn, sizeof tn);
            st = tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: type %s, expected an integer", c->path, name, tn);
        } else if (H5Tget_size(t) > 8) {
            st = tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: a %zu-byte integer, expected at most 8 bytes",
                         c->path, name, H5Tget_size(t));
        } else if (H5Tget_sign(t) == H5T_SGN_NONE) {
            /* read unsigned as uint64: libhdf5 would silently clamp a value above INT64_MAX when converting */
            uint64_t u = 0;
            if (H5Aread(a, H5T_NATIVE_UINT64, &u) < 0)
                st = tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: read failed", c->path, name);
            else if (u > (uint64_t)INT64_MAX)
                st = tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: %llu is out of range, expected at most %lld",
                             c->path, name, (unsigned long long)u, (long long)INT64_MAX);
            else
                *val = (int64_t)u;
        } else if (H5Aread(a, H5T_NATIVE_INT64, val) < 0) {
            st = tl_fail(c->err, TL_ERR_INPUT, "%s: attribute %s: read failed", c->path, name);
        }
    }
    close_attr(a, t, s);
    return st;
}

/* Reads a string root attribute (fixed or variable length) into an owned string. */
static tl_status read_str_attr(rd_ctx *c, const char *name, char **val, int *present) {
    hid_t a, t, s;
    *val = NULL;
    char what[64];
    snprintf(what, sizeof what, "attribute %s", name);
    tl_status st = open_scalar_attr(c, name, &a, &t, &s, present);
    if (st == TL_OK && *present) st = read_strings(c, what, a, 1, t, s, 1, val);
    close_attr(a, t, s);
    return st;
}

static int cmp_str_ptr(const void *x, const void *y) {
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static tl_status check_root(rd_ctx *c, const char *want_kind, int model_vocab, int64_t *vocab_size_attr) {
    *vocab_size_attr = 0;
    int present;
    int64_t fmt = 0;
    TL_TRY(read_int_attr(c, "tailor_format", &fmt, &present));
    if (!present) return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute tailor_format: missing, expected 1", c->path);
    if (fmt != 1)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute tailor_format: %lld, expected 1 (this tailor reads "
                       "format 1)", c->path, (long long)fmt);
    char *kind = NULL;
    TL_TRY(read_str_attr(c, "kind", &kind, &present));
    if (!present)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute kind: missing, expected \"%s\"", c->path, want_kind);
    tl_status st = TL_OK;
    if (strcmp(kind, want_kind) != 0)
        st = tl_fail(c->err, TL_ERR_INPUT, "%s: attribute kind: \"%.64s\", expected \"%s\"", c->path, kind,
                     want_kind);
    free(kind);
    TL_TRY(st);
    int64_t vs = 0;
    TL_TRY(read_int_attr(c, "vocab_size", &vs, &present));
    if (present) {
        if (vs <= 0)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute vocab_size: %lld, expected a positive integer",
                           c->path, (long long)vs);
        if (model_vocab > 0 && vs > model_vocab)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: attribute vocab_size: %lld exceeds the model's vocabulary "
                           "size %d", c->path, (long long)vs, model_vocab);
        *vocab_size_attr = vs;
    }
    return TL_OK;
}

static tl_status check_users(rd_ctx *c, int *n_users, char ***names, char ***groups) {
    *n_users = 0;
    *names = *groups = NULL;
    int64_t nu = 0;
    char **nm = NULL;
    TL_TRY(read_string_1d(c, "/users/name", &nm, &nu));
    if (nu > 0x7fffffff) {
        tl_free_strings(nm, nu);
        return tl_fail(c->err, TL_ERR_INPUT, "%s: /users/name: %lld users, at most 2^31-1", c->path, (long long)nu);
    }
    *names = nm;
    *n_users = (int)nu;
    if (nu == 0) return tl_fail(c->err, TL_ERR_INPUT, "%s: /users/name: no users", c->path);
    for (int u = 0; u < *n_users; u++)
        if (nm[u][0] == '\0')
            return tl_fail(c->err, TL_ERR_INPUT, "%s: /users/name: user %d has an empty name", c->path, u);
    /* Duplicates would make two users share one adapter name (and export directory): sort copies to find them. */
    char **sorted = malloc((size_t)nu * sizeof *sorted);
    if (!sorted) return tl_fail(c->err, TL_ERR_RUNTIME, "%s: /users/name: out of memory", c->path);
    memcpy(sorted, nm, (size_t)nu * sizeof *sorted);
    qsort(sorted, (size_t)nu, sizeof *sorted, cmp_str_ptr);
    tl_status st = TL_OK;
    for (int64_t i = 1; i < nu; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            st = tl_fail(c->err, TL_ERR_INPUT, "%s: /users/name: duplicate user name \"%.200s\"", c->path,
                         sorted[i]);
            break;
        }
    free(sorted);
    TL_TRY(st);
    int has_group = 0;
    TL_TRY(find_object(c, "/users/group", &has_group));
    if (has_group) {
        int64_t ng = 0;
        char **gr = NULL;
        st = read_string_1d(c, "/users/group", &gr, &ng);
        if (st == TL_OK && ng != nu) {
            tl_free_strings(gr, ng);
            return tl_fail(c->err, TL_ERR_INPUT, "%s: /users/group: length %lld, expected %lld (the length of "
                           "/users/name)", c->path, (long long)ng, (long long)nu);
        }
        TL_TRY(st);
        *groups = gr;
        for (int u = 0; u < *n_users; u++)
            if (gr[u][0] == '\0')
                return tl_fail(c->err, TL_ERR_INPUT, "%s: /users/group: user %d has an empty group name", c->path,
                               u);
    }
    return TL_OK;
}

static tl_status check_sft(rd_ctx *c, tl_sft_dataset *ds, int model_vocab) {
    int64_t nt = 0, no = 0, np = 0, nus = 0;
    TL_TRY(tl_h5_read_i32(c, "/sft/tokens", &ds->tokens, &nt, c->err));
    TL_TRY(tl_h5_read_i64(c, "/sft/offsets", &ds->offsets, &no, c->err));
    TL_TRY(tl_h5_read_i32(c, "/sft/prompt_len", &ds->prompt_len, &np, c->err));
    TL_TRY(tl_h5_read_i32(c, "/sft/user", &ds->user, &nus, c->err));
    ds->n_tokens = nt;
    if (no == 0)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: /sft/offsets: no elements, expected N+1 (at least 1)", c->path);
    int64_t n = no - 1;
    ds->n_examples = n;
    if (n == 0) return tl_fail(c->err, TL_ERR_INPUT, "%s: /sft/offsets: empty dataset (no examples)", c->path);
    if (np != n)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: /sft/prompt_len: length %lld, expected %lld (one per example, "
                       "/sft/offsets has %lld)", c->path, (long long)np, (long long)n, (long long)no);
    if (nus != n)
        return tl_fail(c->err, TL_ERR_INPUT, "%s: /sft/user: length %lld, expected %lld (one per example, "
                       "/sft/offsets has %lld)", c->path, (long long)nus, (long long)n, (long long)no);
    TL_TRY(tl_check_offsets(c->path, "/sft/offsets", ds->offsets, n, "/sft/tokens", nt, c->err));
    for (int64_t i = 0; i < n; i++) {
        int64_t len = ds->offsets[i + 1] - ds->offsets[i];
        int32_t p = ds->prompt_len[i];
        if (p < 0 || p > len)
            return tl_fail(c->err, TL_ERR_INPUT, "%s: /sft/prompt_len: example %lld has prompt_len %d, expected 0 "
                           "<= prompt_len <= %lld (its length)", c->path, (long long)i, (int)p, (long long)len);
    }
    TL_TRY(tl_check_user_range(c->path, "/sft/user", "example", ds->user, n, ds->n_users, c->err));
    TL_TRY(tl_check_tokens(c->path, "/sft/tokens", "example", ds->tokens, ds->offsets, n, model_vocab,
                           ds->vocab_size_attr, c->err));
    /* A token is trained when it is a response token at position >= 1 (tl_batcher.h); truncation to any
     * max_seq_len >= 2 keeps at least one such token, so this holds for every run. A file where no example has
     * one would "train" nothing and export untouched adapters; single users without one stay allowed. */
    for (int64_t i = 0; i < n; i++) {
        int64_t len = ds->offsets[i + 1] - ds->offsets[i];
        if (len - ds->prompt_len[i] >= 1 && len >= 2) return TL_OK;
    }
    return tl_fail(c->err, TL_ERR_INPUT, "%s: /sft/prompt_len: no example has a token to train on (each is all "
                   "prompt or shorter than 2 tokens), expected at least one example with a response", c->path);
}

void tl_sft_free(tl_sft_dataset *ds) {
    if (!ds) return;
    tl_free_strings(ds->user_names, ds->n_users);
    tl_free_strings(ds->user_groups, ds->n_users);
    free(ds->tokens);
    free(ds->offsets);
    free(ds->prompt_len);
    free(ds->user);
    free(ds->path);
    memset(ds, 0, sizeof *ds);
}

static tl_h5_common sft_fields(void *p) {
    tl_sft_dataset *d = p;
    return (tl_h5_common){&d->path, &d->n_users, &d->user_names, &d->user_groups, &d->vocab_size_attr};
}
static tl_status sft_body(tl_h5_reader *r, void *ds, int model_vocab, tl_error *err) {
    r->err = err;
    return check_sft(r, ds, model_vocab);
}
static void sft_free(void *ds) { tl_sft_free(ds); }

tl_status tl_sft_open(const char *path, int model_vocab, tl_sft_dataset *out, tl_error *err) {
    static const tl_h5_kind_reader k = {"sft", sizeof(tl_sft_dataset), sft_fields, sft_body, sft_free};
    return tl_h5_open_isolated(path, model_vocab, &k, out, err);
}

/* The open of any kind in this process (tl_h5_open_isolated's second half). */
static tl_status open_direct(const char *path, int model_vocab, const tl_h5_kind_reader *k, void *out,
                             tl_error *err) {
    memset(out, 0, k->size);
    tl_h5_reader *r = NULL;
    TL_TRY(tl_h5_reader_open(path, &r, err));
    tl_h5_common c = k->fields(out);
    tl_status st = TL_OK;
    *c.path = strdup(path);
    if (!*c.path) st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    if (st == TL_OK) st = tl_h5_read_root(r, k->kind, model_vocab, c.vocab_size_attr, err);
    if (st == TL_OK) st = tl_h5_read_users(r, c.n_users, c.user_names, c.user_groups, err);
    if (st == TL_OK) st = k->body(r, out, model_vocab, err);
    st = tl_h5_reader_close(r, st, err);
    if (st != TL_OK) k->free(out);
    return st;
}

typedef struct {
    const tl_h5_kind_reader *k;
    int model_vocab;
} open_job_arg;

/* The isolation child's job: the whole open into a scratch struct, freed. */
static tl_status open_job(const char *path, void *arg, tl_error *err) {
    const open_job_arg *a = arg;
    void *ds = malloc(a->k->size);
    if (!ds) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    tl_status st = open_direct(path, a->model_vocab, a->k, ds, err);
    if (st == TL_OK) a->k->free(ds);
    free(ds);
    return st;
}

tl_status tl_h5_open_isolated(const char *path, int model_vocab, const tl_h5_kind_reader *k, void *out,
                              tl_error *err) {
    memset(out, 0, k->size);
    open_job_arg a = {k, model_vocab};
    TL_TRY(tl_h5_isolated(path, open_job, &a, err));
    return open_direct(path, model_vocab, k, out, err);
}

/* ------------------------------------------------------------------------------------------------------------
 * Isolation: libhdf5 trusts a file's metadata; a corrupt B-tree, heap or object header can make it read out
 * of bounds, abort on an assertion or loop forever, and none of that can be caught in-process. So every open
 * first runs the whole validation (open, read and check everything, exactly what the caller will run) in a
 * forked child with a time limit, and turns a crash or a hang there into one line naming the file; only then
 * does the caller read the file in its own process. The child inherits an initialised libhdf5 with no file
 * open (readers close theirs), uses nothing but HDF5 and malloc (never MPI, CUDA, OpenMP or stdio: its stdout
 * and stderr go to /dev/null), reports through a pipe in one write of less than PIPE_BUF and ends with _exit,
 * so no atexit handler (HDF5's, LSan's, MPI's) and no inherited stdio buffer runs twice. Under AddressSanitizer
 * a crash in the child ends in an exit status, not a signal: any end without a complete report is a crash. */

#define ISO_MAGIC 0x74683566u /* "th5f" */

typedef struct {
    uint32_t magic;
    int32_t code;
    char msg[sizeof(((tl_error *)0)->msg)];
} iso_report;

/* An optional integer environment variable in [lo, hi]; anything else is TL_ERR_INPUT naming it. */
static tl_status env_long(const char *name, long lo, long hi, long dflt, long *out, tl_error *err) {
    *out = dflt;
    const char *v = getenv(name);
    if (!v || !*v) return TL_OK;
    int64_t x;
    if (tl_parse_i64(name, v, lo, hi, &x, err) != TL_OK) /* exact: " 5", "+5x" and "1e3" are not numbers here */
        return tl_fail(err, TL_ERR_INPUT, "environment %s: \"%.40s\", expected an integer in [%ld, %ld]", name, v, lo,
                       hi);
    *out = (long)x;
    return TL_OK;
}

tl_status tl_h5_isolated(const char *path, tl_h5_job job, void *arg, tl_error *err) {
    long on = 1, limit = 0;
    TL_TRY(env_long("TAILOR_HDF5_ISOLATE", 0, 1, 1, &on, err));
    if (!on) return TL_OK;
    /* default: 60 s plus 1 s per 16 MiB, far above what a sound file needs (reading runs at GB/s) */
    struct stat sb;
    long dflt = 60 + (stat(path, &sb) == 0 && sb.st_size > 0 ? (long)(sb.st_size >> 24) : 0);
    TL_TRY(env_long("TAILOR_HDF5_TIMEOUT_S", 1, 1000000, dflt, &limit, err));
    int fds[2];
    if (pipe(fds) != 0) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create a pipe: %s", path, strerror(errno));
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot start the process that checks it: %s (TAILOR_HDF5_ISOLATE=0 "
                       "reads a trusted file without it)", path, strerror(e));
    }
    if (pid == 0) {
        /* The child must not outlive the parent: a tailor killed or interrupted while libhdf5 spins here would
         * leave it spinning forever. So it dies with the parent (and checks the parent did not die before the
         * request took effect), and carries its own alarm as a backstop to the parent's deadline. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(4);
        alarm((unsigned)(limit + 5));
        close(fds[0]);
        int dn = open("/dev/null", O_WRONLY);
        if (dn >= 0) {
            dup2(dn, STDOUT_FILENO);
            dup2(dn, STDERR_FILENO);
            if (dn > STDERR_FILENO) close(dn);
        }
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        static iso_report rep; /* static: no large frame on the child's stack */
        tl_error e;
        memset(&e, 0, sizeof e);
        rep.code = (int32_t)job(path, arg, &e);
        rep.magic = ISO_MAGIC;
        memcpy(rep.msg, e.msg, sizeof rep.msg);
        rep.msg[sizeof rep.msg - 1] = '\0';
        const char *p = (const char *)&rep;
        size_t left = sizeof rep;
        while (left > 0) {
            ssize_t w = write(fds[1], p, left);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) _exit(3);
            p += w;
            left -= (size_t)w;
        }
        _exit(0);
    }
    close(fds[1]);
    iso_report rep;
    size_t got = 0;
    int timed_out = 0;
    const double deadline = tl_now_s() + (double)limit;
    while (got < sizeof rep) {
        double left = deadline - tl_now_s();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        int pr = poll(&pf, 1, left > 1e6 ? 1000000000 : (int)(left * 1000.0) + 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) break;
        if (pr == 0) continue; /* the deadline is checked at the top */
        ssize_t r = read(fds[0], (char *)&rep + got, sizeof rep - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break; /* EOF: the child ended */
        got += (size_t)r;
    }
    close(fds[0]);
    if (timed_out) kill(pid, SIGKILL);
    int wst = 0;
    pid_t w;
    do w = waitpid(pid, &wst, 0);
    while (w < 0 && errno == EINTR);
    if (got == sizeof rep && rep.magic == ISO_MAGIC) {
        if (rep.code == TL_OK) return TL_OK;
        rep.msg[sizeof rep.msg - 1] = '\0';
        return tl_fail(err, rep.code == TL_ERR_INPUT ? TL_ERR_INPUT : TL_ERR_RUNTIME, "%s", rep.msg);
    }
    if (timed_out)
        return tl_fail(err, TL_ERR_INPUT, "%s: libhdf5 hung reading it (no result in %ld s, TAILOR_HDF5_TIMEOUT_S): "
                       "the file is corrupt", path, limit);
    if (w == pid && WIFSIGNALED(wst))
        return tl_fail(err, TL_ERR_INPUT, "%s: libhdf5 crashed reading it (signal %d, %s): the file is corrupt", path,
                       WTERMSIG(wst), strsignal(WTERMSIG(wst)));
    return tl_fail(err, TL_ERR_INPUT, "%s: libhdf5 crashed reading it (the checking process ended with status %d "
                   "and no result): the file is corrupt", path, w == pid && WIFEXITED(wst) ? WEXITSTATUS(wst) : -1);
}

/* ------------------------------------------------------------------------------------------------------------
 * Building blocks shared with the other kinds' readers (tl_dataset.h) */

tl_status tl_h5_reader_open(const char *path, tl_h5_reader **out, tl_error *err) {
    *out = NULL;
    /* open first: HDF5's own answer for a missing or unreadable file does not say which. O_NONBLOCK: opening a
     * FIFO (or a device) must not wait for a writer; only a regular file goes on to libhdf5. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return tl_fail(err, TL_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat fs;
    int stat_ok = fstat(fd, &fs) == 0;
    int stat_errno = errno;
    close(fd);
    if (!stat_ok) return tl_fail(err, TL_ERR_INPUT, "%s: cannot stat: %s", path, strerror(stat_errno));
    if (S_ISDIR(fs.st_mode)) return tl_fail(err, TL_ERR_INPUT, "%s: is a directory, expected an HDF5 file", path);
    if (!S_ISREG(fs.st_mode)) return tl_fail(err, TL_ERR_INPUT, "%s: not a regular file, expected an HDF5 file", path);
    tl_h5_reader *r = calloc(1, sizeof *r);
    if (!r) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    r->path = path;
    r->file_size = (int64_t)fs.st_size;
    r->file = H5I_INVALID_HID;
    r->err = err;
    r->restore = H5Eget_auto2(H5E_DEFAULT, &r->old_fn, &r->old_data) >= 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    tl_status st = TL_OK;
    if (H5Fis_hdf5(path) <= 0) {
        st = tl_fail(err, TL_ERR_INPUT, "%s: not an HDF5 file", path);
    } else {
        r->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (r->file < 0) st = tl_fail(err, TL_ERR_INPUT, "%s: cannot open as HDF5 (corrupt or truncated file)", path);
    }
    if (st == TL_OK) {
        hid_t fcpl = H5Fget_create_plist(r->file);
        if (fcpl < 0 || H5Pget_userblock(fcpl, &r->userblock) < 0)
            st = tl_fail(err, TL_ERR_INPUT, "%s: cannot read the file's creation properties", path);
        if (fcpl >= 0) H5Pclose(fcpl);
    }
    if (st != TL_OK) return tl_h5_reader_close(r, st, err);
    *out = r;
    return TL_OK;
}

tl_status tl_h5_reader_close(tl_h5_reader *r, tl_status st, tl_error *err) {
    if (!r) return st;
    if (r->file >= 0 && H5Fclose(r->file) < 0 && st == TL_OK)
        st = tl_fail(err, TL_ERR_RUNTIME, "%s: closing the file failed", r->path);
    if (r->restore) H5Eset_auto2(H5E_DEFAULT, r->old_fn, r->old_data);
    free(r);
    return st;
}

tl_status tl_h5_read_root(tl_h5_reader *r, const char *kind, int model_vocab, int64_t *vocab_size_attr,
                          tl_error *err) {
    r->err = err;
    return check_root(r, kind, model_vocab, vocab_size_attr);
}

tl_status tl_h5_read_users(tl_h5_reader *r, int *n_users, char ***names, char ***groups, tl_error *err) {
    r->err = err;
    return check_users(r, n_users, names, groups);
}

void tl_free_strings(char **s, int64_t n) {
    if (!s) return;
    for (int64_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

tl_status tl_h5_read_i32(tl_h5_reader *r, const char *name, int32_t **out, int64_t *len, tl_error *err) {
    r->err = err;
    void *buf = NULL;
    tl_status st = read_int_1d(r, name, 4, &buf, len);
    *out = buf;
    return st;
}

tl_status tl_h5_read_i64(tl_h5_reader *r, const char *name, int64_t **out, int64_t *len, tl_error *err) {
    r->err = err;
    void *buf = NULL;
    tl_status st = read_int_1d(r, name, 8, &buf, len);
    *out = buf;
    return st;
}

struct tl_h5_array {
    rd_ctx *r;
    hid_t d;
    size_t width;
    int64_t len;
    char name[64];
};

tl_status tl_h5_array_open(tl_h5_reader *r, const char *name, size_t width, tl_h5_array **out, int64_t *len,
                           tl_error *err) {
    r->err = err;
    *out = NULL;
    tl_h5_array *a = calloc(1, sizeof *a);
    if (!a) return tl_fail(err, TL_ERR_RUNTIME, "%s: %s: out of memory", r->path, name);
    tl_status st = open_int_1d(r, name, width, &a->d, len);
    if (st != TL_OK) {
        free(a);
        return st;
    }
    a->r = r, a->width = width, a->len = *len;
    snprintf(a->name, sizeof a->name, "%s", name);
    *out = a;
    return TL_OK;
}

tl_status tl_h5_array_read(tl_h5_array *a, int64_t start, int64_t count, void *out, tl_error *err) {
    if (start < 0 || count < 0 || start > a->len || count > a->len - start)
        return tl_fail(err, TL_ERR_RUNTIME, "%s: %s: elements [%lld, %lld) of %lld requested", a->r->path, a->name,
                       (long long)start, (long long)(start + count), (long long)a->len);
    if (!count) return TL_OK;
    hsize_t s[1] = {(hsize_t)start}, n[1] = {(hsize_t)count};
    hid_t fs = H5Dget_space(a->d), ms = H5Screate_simple(1, n, NULL);
    int bad = fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, s, NULL, n, NULL) < 0 ||
              H5Dread(a->d, a->width == 4 ? H5T_NATIVE_INT32 : H5T_NATIVE_INT64, ms, fs, H5P_DEFAULT, out) < 0;
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (bad)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s: read failed (corrupt file or unsupported filter)", a->r->path,
                       a->name);
    return TL_OK;
}

void tl_h5_array_close(tl_h5_array *a) {
    if (!a) return;
    H5Dclose(a->d);
    free(a);
}

tl_status tl_h5_has(tl_h5_reader *r, const char *name, int *exists, tl_error *err) {
    r->err = err;
    return find_object(r, name, exists);
}

tl_status tl_check_offsets(const char *path, const char *name, const int64_t *off, int64_t n,
                           const char *tokens_name, int64_t n_tokens, tl_error *err) {
    if (off[0] != 0)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s: offsets[0] = %lld, expected 0", path, name, (long long)off[0]);
    for (int64_t i = 0; i < n; i++)
        if (off[i + 1] < off[i])
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: decreasing at index %lld (%lld < %lld)", path, name,
                           (long long)(i + 1), (long long)off[i + 1], (long long)off[i]);
    if (off[n] != n_tokens)
        return tl_fail(err, TL_ERR_INPUT, "%s: %s: last offset %lld, expected %lld (the length of %s)", path, name,
                       (long long)off[n], (long long)n_tokens, tokens_name);
    return TL_OK;
}

tl_status tl_check_user_range(const char *path, const char *name, const char *item, const int32_t *user, int64_t n,
                              int n_users, tl_error *err) {
    for (int64_t i = 0; i < n; i++)
        if (user[i] < 0 || user[i] >= n_users)
            return tl_fail(err, TL_ERR_INPUT, "%s: %s: %s %lld has user %d, expected 0 <= user < %d", path, name,
                           item, (long long)i, (int)user[i], n_users);
    return TL_OK;
}

tl_status tl_check_tokens(const char *path, const char *name, const char *item, const int32_t *tokens,
                          const int64_t *off, int64_t n, int model_vocab, int64_t vocab_size_attr, tl_error *err) {
    int64_t limit = model_vocab > 0 ? model_vocab : INT64_MAX;
    if (vocab_size_attr > 0 && vocab_size_attr < limit) limit = vocab_size_attr;
    for (int64_t i = 0; i < n; i++)
        for (int64_t t = off[i]; t < off[i + 1]; t++) {
            int32_t tok = tokens[t];
            if (tok < 0)
                return tl_fail(err, TL_ERR_INPUT, "%s: %s: %s %lld position %lld: token %d is negative", path, name,
                               item, (long long)i, (long long)(t - off[i]), (int)tok);
            if (tok >= limit) {
                int by_model = model_vocab > 0 && limit == model_vocab;
                return tl_fail(err, TL_ERR_INPUT, "%s: %s: %s %lld position %lld: token %d, expected < %lld (%s)",
                               path, name, item, (long long)i, (long long)(t - off[i]), (int)tok, (long long)limit,
                               by_model ? "the model's vocabulary size" : "attribute vocab_size");
            }
        }
    return TL_OK;
}

static tl_status kind_direct(const char *path, char *kind, size_t cap, tl_error *err) {
    if (cap) kind[0] = '\0';
    tl_h5_reader *r = NULL;
    TL_TRY(tl_h5_reader_open(path, &r, err));
    int present = 0;
    char *k = NULL;
    tl_status st = read_str_attr(r, "kind", &k, &present);
    if (st == TL_OK && !present)
        st = tl_fail(err, TL_ERR_INPUT, "%s: attribute kind: missing, expected \"sft\" or \"preference\"", path);
    if (st == TL_OK && strlen(k) >= cap)
        st = tl_fail(err, TL_ERR_INPUT, "%s: attribute kind: \"%.64s\" is longer than %zu bytes, not a known kind",
                     path, k, cap ? cap - 1 : 0);
    if (st == TL_OK) memcpy(kind, k, strlen(k) + 1);
    free(k);
    return tl_h5_reader_close(r, st, err);
}

typedef struct {
    char *kind;
    size_t cap;
} kind_arg;

static tl_status kind_job(const char *path, void *arg, tl_error *err) {
    kind_arg *k = arg;
    return kind_direct(path, k->kind, k->cap, err);
}

tl_status tl_h5_kind(const char *path, char *kind, size_t cap, tl_error *err) {
    if (cap) kind[0] = '\0';
    kind_arg k = {kind, cap};
    TL_TRY(tl_h5_isolated(path, kind_job, &k, err));
    return kind_direct(path, kind, cap, err);
}
