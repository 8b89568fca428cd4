/* Writers for the dataset tests' hand-made HDF5 files (SFT and preference): 1-D (or deliberately [n, 1])
 * datasets, string lists in each storage form the reader accepts, and scalar attributes. Each returns 1 on
 * success, 0 on any HDF5 failure, so a test can stop at the first broken write. Header-only: each test is one
 * translation unit. */
#ifndef TL_H5_FIXTURE_H
#define TL_H5_FIXTURE_H

#include <hdf5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* How a string list is stored. */
enum { STR_FIXED_NULLPAD, STR_FIXED_NULLTERM, STR_FIXED_SPACEPAD, STR_VLEN };

/* n elements of mtype in memory as dataset name of file type ftype; rank2: shape [n, 1], same elements, wrong
 * shape. lcpl: the link creation property list (H5P_DEFAULT, or one that creates missing groups). */
__attribute__((unused)) static int h5_write_ds(hid_t loc, hid_t lcpl, const char *name, hid_t ftype, hid_t mtype,
                                               const void *data, int64_t n, int rank2) {
    hsize_t dims[2] = {(hsize_t)n, 1};
    hid_t sp = H5Screate_simple(rank2 ? 2 : 1, dims, NULL);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int ok = sp >= 0 && d >= 0 && (n == 0 || H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    if (d >= 0) H5Dclose(d);
    if (sp >= 0) H5Sclose(sp);
    return ok;
}

/* Writes n (<= 8) UTF-8 strings in the given style. Fixed-length styles write the raw bytes (the text then
 * NULs) with the file's own padding so the bytes on disk are exactly those. */
__attribute__((unused)) static int h5_write_strings(hid_t loc, hid_t lcpl, const char *name, char (*strs)[32], int n,
                                                    int style, int fixed_size) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_cset(t, H5T_CSET_UTF8);
    int ok;
    hsize_t dims[1] = {(hsize_t)n};
    hid_t sp = H5Screate_simple(1, dims, NULL);
    if (style == STR_VLEN) {
        H5Tset_size(t, H5T_VARIABLE);
        const char *ptrs[8];
        for (int i = 0; i < n; i++) ptrs[i] = strs[i];
        hid_t d = H5Dcreate2(loc, name, t, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        ok = d >= 0 && H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs) >= 0;
        if (d >= 0) H5Dclose(d);
    } else {
        H5Tset_size(t, (size_t)fixed_size);
        H5Tset_strpad(t, style == STR_FIXED_NULLPAD    ? H5T_STR_NULLPAD
                         : style == STR_FIXED_NULLTERM ? H5T_STR_NULLTERM
                                                       : H5T_STR_SPACEPAD);
        char *buf = calloc((size_t)n, (size_t)fixed_size);
        for (int i = 0; i < n; i++) memcpy(buf + (size_t)i * (size_t)fixed_size, strs[i], strlen(strs[i]));
        hid_t d = H5Dcreate2(loc, name, t, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        ok = buf && d >= 0 && H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
        if (d >= 0) H5Dclose(d);
        free(buf);
    }
    H5Sclose(sp);
    H5Tclose(t);
    return ok;
}

/* A scalar integer attribute stored as ftype. */
__attribute__((unused)) static int h5_write_attr_int(hid_t loc, const char *name, hid_t ftype, int64_t v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    int ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return ok;
}

/* A scalar string attribute, variable-length or fixed-length with NUL padding the reader must strip. */
__attribute__((unused)) static int h5_write_attr_str(hid_t loc, const char *name, const char *v, int vlen) {
    hid_t t = H5Tcopy(H5T_C_S1);
    hid_t sp = H5Screate(H5S_SCALAR);
    int ok;
    if (vlen) {
        H5Tset_size(t, H5T_VARIABLE);
        hid_t a = H5Acreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        ok = a >= 0 && H5Awrite(a, t, &v) >= 0;
        if (a >= 0) H5Aclose(a);
    } else {
        H5Tset_size(t, strlen(v) + 3);
        H5Tset_strpad(t, H5T_STR_NULLPAD);
        char buf[64] = {0};
        memcpy(buf, v, strlen(v));
        hid_t a = H5Acreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        ok = a >= 0 && H5Awrite(a, t, buf) >= 0;
        if (a >= 0) H5Aclose(a);
    }
    H5Sclose(sp);
    H5Tclose(t);
    return ok;
}

#endif
