#include "engine/ggml_types.h"

namespace metallic {

bool type_geometry(uint32_t type, BlockGeometry* out) {
    switch (static_cast<GgmlType>(type)) {
        case GgmlType::F32: *out = {1, 4}; return true;
        case GgmlType::F16: *out = {1, 2}; return true;
        case GgmlType::BF16: *out = {1, 2}; return true;
        case GgmlType::Q4_0: *out = {32, 18}; return true;
        case GgmlType::Q4_1: *out = {32, 20}; return true;
        case GgmlType::Q5_0: *out = {32, 22}; return true;
        case GgmlType::Q5_1: *out = {32, 24}; return true;
        case GgmlType::Q8_0: *out = {32, 34}; return true;
        case GgmlType::Q8_1: *out = {32, 36}; return true;
        case GgmlType::Q2_K: *out = {256, 84}; return true;
        case GgmlType::Q3_K: *out = {256, 110}; return true;
        case GgmlType::Q4_K: *out = {256, 144}; return true;
        case GgmlType::Q5_K: *out = {256, 176}; return true;
        case GgmlType::Q6_K: *out = {256, 210}; return true;
        case GgmlType::Q8_K: *out = {256, 292}; return true;
    }
    return false;
}

const char* type_name(uint32_t type) {
    switch (static_cast<GgmlType>(type)) {
        case GgmlType::F32: return "F32";
        case GgmlType::F16: return "F16";
        case GgmlType::BF16: return "BF16";
        case GgmlType::Q4_0: return "Q4_0";
        case GgmlType::Q4_1: return "Q4_1";
        case GgmlType::Q5_0: return "Q5_0";
        case GgmlType::Q5_1: return "Q5_1";
        case GgmlType::Q8_0: return "Q8_0";
        case GgmlType::Q8_1: return "Q8_1";
        case GgmlType::Q2_K: return "Q2_K";
        case GgmlType::Q3_K: return "Q3_K";
        case GgmlType::Q4_K: return "Q4_K";
        case GgmlType::Q5_K: return "Q5_K";
        case GgmlType::Q6_K: return "Q6_K";
        case GgmlType::Q8_K: return "Q8_K";
    }
    return "unknown";
}

}  // namespace metallic
