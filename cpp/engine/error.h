// Errors the core raises. BadInput becomes a Python ValueError (the file or the request is
// wrong); anything else is a bug or an OS failure and becomes RuntimeError.
#pragma once

#include <stdexcept>
#include <string>

namespace metallic {

struct BadInput : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

}  // namespace metallic
