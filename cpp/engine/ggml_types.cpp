#include "engine/ggml_types.h"

namespace metallic {

const char* type_name(uint32_t type) {
    const GgmlTypeInfo* t = ggml_type(type);
    return t ? t->name : "unknown";
}

}  // namespace metallic
