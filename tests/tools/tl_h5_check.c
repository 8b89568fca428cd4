/* tl_h5_check KIND FILE: runs data build's bounded-memory output check (tl_data_check_bounded) on FILE and prints
 * "ok" or its error line; exit 0, or 2 on an input error. For tests/e2e/data_check_bounded.sh, which compares it
 * with the reader train uses on every bad-file case. */
#include <stdio.h>

#include "data/tl_dataset_build.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: tl_h5_check sft|preference|prompt FILE\n");
        return 2;
    }
    tl_error err = {0};
    tl_status s = tl_data_check_bounded(argv[2], argv[1], &err);
    if (s != TL_OK) {
        printf("%s\n", err.msg);
        return s == TL_ERR_INPUT ? 2 : 1;
    }
    printf("ok\n");
    return 0;
}
