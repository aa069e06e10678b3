// The errors the core raises: four kinds, the same four as python/metallic/errors.py, mapped to
// those classes in one place (the exception translator in bindings.cpp).
//
//   BadFile      the file is malformed                  -> metallic.GGUFError
//   Unsupported  a well-formed file we cannot run        -> metallic.ModelError
//   BadRequest   a bad request or argument               -> metallic.RequestError
//   ContextFull  a request that does not fit the context -> metallic.ContextError
//
// Anything else that escapes (std::logic_error, std::runtime_error, a simulator's misuse check)
// is a bug in metallic or a failure of the OS, and arrives as metallic.InternalError.
#pragma once

#include <stdexcept>
#include <string>

namespace metallic {

struct BadFile : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Unsupported : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct BadRequest : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ContextFull : BadRequest {
    using BadRequest::BadRequest;
};

}  // namespace metallic
