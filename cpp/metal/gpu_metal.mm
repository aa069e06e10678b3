// The GPU interface over real Metal (Apple only; Objective-C++ with ARC).
//
// Deliberately thin: each method is the one Metal call it names, used the way Apple documents
// it. Nothing here has been compiled or run yet (the project's CI has no Mac): keep changes
// conservative and check them against the Metal documentation.
//
//   device        MTLCreateSystemDefaultDevice(); one command queue
//   buffers       newBufferWithLength:options: with MTLResourceStorageModeShared (zero-filled,
//                 CPU and GPU share the memory: contents is valid for the host after a wait)
//   wrap          newBufferWithBytesNoCopy:length:options:deallocator: over page-aligned host
//                 memory (the mmap'd weights); the memory stays owned by the mapping
//   library       metallic.metallib next to the extension module, or $METALLIC_METALLIB
//   pipelines     newFunctionWithName:constantValues:error: + newComputePipelineStateWithFunction:
//   command bufs  [queue commandBuffer], one computeCommandEncoder (serial dispatch: each
//                 dispatch sees the previous one's writes), endEncoding + commit,
//                 waitUntilCompleted and a status check
//
// Objects Metal returns autoreleased are created inside @autoreleasepool blocks and kept by the
// strong (ARC) members of the C++ wrappers, so nothing piles up in a thread without a pool.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <dlfcn.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "metal/gpu.h"

namespace metallic::gpu {
namespace {

std::string describe(NSError* error) {
    return error ? std::string([[error localizedDescription] UTF8String]) : std::string("unknown error");
}

class MetalBuffer final : public Buffer {
public:
    explicit MetalBuffer(id<MTLBuffer> b) : Buffer([b contents], [b length]), buffer(b) {}
    id<MTLBuffer> buffer;
};

class MetalPipeline final : public Pipeline {
public:
    MetalPipeline(const std::string& name, id<MTLComputePipelineState> s) : Pipeline(name), state(s) {}
    uint32_t max_threads() const override { return uint32_t([state maxTotalThreadsPerThreadgroup]); }
    id<MTLComputePipelineState> state;
};

class MetalEncoder final : public Encoder {
public:
    MetalEncoder(Stats* stats, std::set<std::pair<const void*, size_t>>* bound, id<MTLComputeCommandEncoder> e)
        : Encoder(stats, bound), enc(e) {}
    id<MTLComputeCommandEncoder> enc;

protected:
    void do_set_pipeline(const Pipeline& p) override {
        [enc setComputePipelineState:static_cast<const MetalPipeline&>(p).state];
    }
    void do_set_buffer(int index, const Buffer& b, size_t offset) override {
        [enc setBuffer:static_cast<const MetalBuffer&>(b).buffer offset:offset atIndex:NSUInteger(index)];
    }
    void do_set_bytes(int index, const void* data, size_t n) override {
        [enc setBytes:data length:n atIndex:NSUInteger(index)];
    }
    void do_set_threadgroup_memory(int index, size_t bytes) override {
        [enc setThreadgroupMemoryLength:bytes atIndex:NSUInteger(index)];
    }
    void do_dispatch(Size3 g, Size3 t) override {
        [enc dispatchThreadgroups:MTLSizeMake(g.x, g.y, g.z) threadsPerThreadgroup:MTLSizeMake(t.x, t.y, t.z)];
    }
};

class MetalCommandBuffer final : public CommandBuffer {
public:
    MetalCommandBuffer(Stats* stats, std::set<std::pair<const void*, size_t>>* bound, id<MTLCommandQueue> queue)
        : CommandBuffer(stats) {
        @autoreleasepool {
            cb_ = [queue commandBuffer];
            enc_ = std::make_unique<MetalEncoder>(stats, bound, [cb_ computeCommandEncoder]);
        }
    }

protected:
    Encoder& do_encoder() override { return *enc_; }
    void do_commit() override {
        [enc_->enc endEncoding];
        [cb_ commit];
    }
    void do_wait() override {
        [cb_ waitUntilCompleted];
        if ([cb_ status] == MTLCommandBufferStatusError)
            throw std::runtime_error("metal: command buffer failed: " + describe([cb_ error]));
    }

private:
    id<MTLCommandBuffer> cb_;
    std::unique_ptr<MetalEncoder> enc_;
};

// Where the extension module lives: metallic.metallib is installed next to it.
std::string default_library_path() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<const void*>(&default_library_path), &info) && info.dli_fname) {
        std::string so = info.dli_fname;
        const size_t slash = so.rfind('/');
        return (slash == std::string::npos ? std::string(".") : so.substr(0, slash)) + "/metallic.metallib";
    }
    return "metallic.metallib";
}

class MetalDevice final : public Device {
public:
    explicit MetalDevice(id<MTLDevice> d) : device_(d) {
        @autoreleasepool {
            queue_ = [device_ newCommandQueue];
            const char* env = std::getenv("METALLIC_METALLIB");
            const std::string path = env && *env ? std::string(env) : default_library_path();
            NSError* error = nil;
            NSURL* url = [NSURL fileURLWithPath:[NSString stringWithUTF8String:path.c_str()]];
            library_ = [device_ newLibraryWithURL:url error:&error];
            if (!library_) throw std::runtime_error("metal: cannot load " + path + ": " + describe(error));
        }
    }

    const char* name() const override { return "metal"; }
    size_t max_buffer_length() const override { return size_t([device_ maxBufferLength]); }

protected:
    std::unique_ptr<Buffer> do_new_buffer(size_t bytes) override {
        id<MTLBuffer> b = [device_ newBufferWithLength:(bytes ? bytes : 1) options:MTLResourceStorageModeShared];
        if (!b) throw std::runtime_error("metal: cannot allocate a buffer of " + std::to_string(bytes) + " bytes");
        return std::make_unique<MetalBuffer>(b);
    }

    std::unique_ptr<Buffer> do_wrap(const void* p, size_t bytes) override {
        id<MTLBuffer> b = [device_ newBufferWithBytesNoCopy:const_cast<void*>(p)
                                                     length:bytes
                                                    options:MTLResourceStorageModeShared
                                                deallocator:nil];
        if (!b) throw std::runtime_error("metal: cannot wrap " + std::to_string(bytes) + " bytes of host memory");
        return std::make_unique<MetalBuffer>(b);
    }

    std::unique_ptr<Pipeline> do_pipeline(const std::string& name, const Constants& constants) override {
        @autoreleasepool {
            NSString* fname = [NSString stringWithUTF8String:name.c_str()];
            NSError* error = nil;
            id<MTLFunction> fn = nil;
            if (constants.empty()) {
                fn = [library_ newFunctionWithName:fname];
            } else {
                MTLFunctionConstantValues* values = [[MTLFunctionConstantValues alloc] init];
                for (const auto& [index, c] : constants) {
                    if (c.type == Constant::Bool) {
                        const bool v = c.i != 0;
                        [values setConstantValue:&v type:MTLDataTypeBool atIndex:NSUInteger(index)];
                    } else if (c.type == Constant::Int) {
                        const int32_t v = int32_t(c.i);
                        [values setConstantValue:&v type:MTLDataTypeInt atIndex:NSUInteger(index)];
                    } else {
                        const float v = c.f;
                        [values setConstantValue:&v type:MTLDataTypeFloat atIndex:NSUInteger(index)];
                    }
                }
                fn = [library_ newFunctionWithName:fname constantValues:values error:&error];
            }
            if (!fn) throw std::runtime_error("metal: no kernel " + name + " in the library: " + describe(error));
            id<MTLComputePipelineState> state = [device_ newComputePipelineStateWithFunction:fn error:&error];
            if (!state) throw std::runtime_error("metal: cannot build pipeline " + name + ": " + describe(error));
            return std::make_unique<MetalPipeline>(name, state);
        }
    }

    std::unique_ptr<CommandBuffer> do_command_buffer() override {
        return std::make_unique<MetalCommandBuffer>(&stats_, &bound_, queue_);
    }

private:
    id<MTLDevice> device_;
    id<MTLCommandQueue> queue_;
    id<MTLLibrary> library_;
};

}  // namespace

std::unique_ptr<Device> make_metal_device() {
    @autoreleasepool {
        id<MTLDevice> d = MTLCreateSystemDefaultDevice();
        if (!d) return nullptr;
        return std::make_unique<MetalDevice>(d);
    }
}

bool metal_device_available() {
    @autoreleasepool {
        return MTLCreateSystemDefaultDevice() != nil;
    }
}

}  // namespace metallic::gpu
