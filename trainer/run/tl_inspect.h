/* tl_inspect: `tailor inspect FILE` — a summary and a full validation of whatever tailor reads or writes:
 * a safetensors file, an HF model directory, an HDF5 dataset, a checkpoint or a run directory. */
#ifndef TL_INSPECT_H
#define TL_INSPECT_H

#include <stdio.h>

#include "kernels/tl_status.h"

tl_status tl_inspect(const char *path, FILE *out, tl_error *err);

#endif
