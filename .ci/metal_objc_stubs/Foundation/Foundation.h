// Syntax-check stubs: the few Foundation declarations cpp/metal/gpu_metal.mm uses, with the
// signatures of Apple's SDK, so clang on Linux can type-check the file (.ci/check_gpu_metal.py).
// Not a substitute for compiling on a Mac.
#pragma once
typedef unsigned long NSUInteger;
typedef long NSInteger;
typedef signed char BOOL;
#define YES __objc_yes  // as objc/objc.h
#define NO __objc_no
typedef double CFTimeInterval;  // CoreFoundation (CFDate.h), which Foundation includes
#define nil ((id)0)
#define NS_ASSUME_NONNULL_BEGIN
#define NS_ASSUME_NONNULL_END

__attribute__((objc_root_class))
@interface NSObject
+ (instancetype)alloc;
- (instancetype)init;
+ (instancetype)new;
@end

@interface NSString : NSObject
+ (instancetype)stringWithUTF8String:(const char *)nullTerminatedCString;
@property (readonly) const char *UTF8String;
@end

@interface NSError : NSObject
@property (readonly, copy) NSString *localizedDescription;
@end

@interface NSArray<ObjectType> : NSObject
@property (readonly) NSUInteger count;
- (ObjectType)objectAtIndex:(NSUInteger)index;
- (BOOL)containsObject:(ObjectType)anObject;
@end

@interface NSURL : NSObject
+ (NSURL *)fileURLWithPath:(NSString *)path;
@end
