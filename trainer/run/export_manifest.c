/* export_manifest: files that tell a multi-LoRA server every adapter of an export under its true name, with the
 * absolute path the export has once swapped into place (docs/export.md: "Serving").
 *   peft: vllm-lora-modules.json   [{"name", "path", "base_model_name"}]: each element is one --lora-modules
 *                                  JSON value of vLLM
 *         lorax-adapters.json      [{"name", "adapter_id", "adapter_source": "local"}]: LoRAX request fields
 *   gguf: llama-server-lora.json   [{"id", "name", "path"}]: id is the adapter's index in llama.cpp server's
 *                                  --lora order (the "id" of its /lora-adapters API)
 *         llama-server-args.txt    one "--lora <path>" argument pair per line, in that order */
#include <stdlib.h>
#include <string.h>

#include "data/tl_io.h"
#include "trainer/run/export_impl.h"

static int add_str(cJSON *o, const char *k, const char *v) { return cJSON_AddStringToObject(o, k, v) != NULL; }

tl_status tl_export_write_manifests(tl_export_job *j, tl_error *err) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(j->index, "adapters");
    int gguf = j->o->format == TL_EXPORT_GGUF;
    cJSON *a = cJSON_CreateArray(), *b = gguf ? NULL : cJSON_CreateArray();
    size_t cap = 1, len = 0;
    char *args = NULL;
    int ok = a && (gguf || b), id = 0;
    if (gguf) {
        for (const cJSON *e = list ? list->child : NULL; e; e = e->next)
            cap += strlen(j->final_abs) + strlen(cJSON_GetObjectItemCaseSensitive(e, "file")->valuestring) + 16;
        ok = ok && (args = malloc(cap)) != NULL;
        if (args) args[0] = '\0';
    }
    char path[TL_PATH_MAX];
    for (const cJSON *e = list ? list->child : NULL; e && ok; e = e->next, id++) {
        const char *name = cJSON_GetObjectItemCaseSensitive(e, "name")->valuestring;
        const cJSON *where = cJSON_GetObjectItemCaseSensitive(e, gguf ? "file" : "dir");
        if (tl_path_join(path, sizeof path, j->final_abs, where->valuestring, err) != TL_OK) {
            cJSON_Delete(a);
            cJSON_Delete(b);
            free(args);
            return TL_ERR_RUNTIME;
        }
        cJSON *x = cJSON_CreateObject();
        ok = x && cJSON_AddItemToArray(a, x);
        if (!ok) cJSON_Delete(x);
        if (gguf) {
            ok = ok && cJSON_AddNumberToObject(x, "id", id) && add_str(x, "name", name) && add_str(x, "path", path);
            if (ok) len += (size_t)snprintf(args + len, cap - len, "--lora %s\n", path);
        } else {
            ok = ok && add_str(x, "name", name) && add_str(x, "path", path) &&
                 add_str(x, "base_model_name", j->base_model);
            cJSON *y = cJSON_CreateObject();
            ok = ok && y && cJSON_AddItemToArray(b, y);
            if (!ok) cJSON_Delete(y);
            ok = ok && add_str(y, "name", name) && add_str(y, "adapter_id", path) &&
                 add_str(y, "adapter_source", "local");
        }
    }
    tl_status s = ok ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "export: out of memory building the manifests");
    if (gguf) {
        if (!s) s = tl_export_write_text(j, "llama-server-lora.json", cJSON_Print(a), err);
        if (!s && len > 0) args[len - 1] = '\0'; /* write_text appends the final newline */
        if (!s) s = tl_export_write_text(j, "llama-server-args.txt", args ? strdup(args) : NULL, err);
    } else {
        if (!s) s = tl_export_write_text(j, "vllm-lora-modules.json", cJSON_Print(a), err);
        if (!s) s = tl_export_write_text(j, "lorax-adapters.json", cJSON_Print(b), err);
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    free(args);
    return s;
}
