// The assembly entry reached from the page-0 sled of Mechanism::SyscallRewrite, and the two C
// functions it calls. See syscall_rewrite.h for the protocol.
#include <sys/syscall.h>

#include "hook/dispatcher.h"
#include "hook/syscall_rewrite_runtime.h"

__thread uintptr_t liveio_rewrite_frame = 0;

// On entry: [rsp] = return address (the byte after the rewritten instruction), every other
// register as the application set it for the syscall. The application's red zone (128 bytes
// below its rsp, i.e. below rsp+8 here) is skipped before anything is stored.
//
// Frame of the common path (rbp = frame base, A = rbp & -16), struct RewriteFrame at A-368:
//   rbp+136       return address           rbp+8..rbp+136  application red zone (untouched)
//   rbp           the application's rbp
//   A-368 ..      SyscallCall {nr, args[6]} (56 bytes), the thread's previous frame (8 bytes)
//   A-304 ..      xmm0..xmm15
//   A-48  ..      rbx, r12..r15 (the C++ code may hold its own values in them while a call
//                 sleeps in the kernel; evacuation puts the application's back), padding
// rsp is 16-byte aligned at the call into C++. The dispatch path publishes rbp in the
// thread's liveio_rewrite_frame for as long as the call runs (see syscall_rewrite_runtime.h).
asm(R"(
    .pushsection .text
    .p2align 4
    .globl liveio_rewrite_entry
    .hidden liveio_rewrite_entry
    .type liveio_rewrite_entry, @function
liveio_rewrite_entry:
    .macro RW_ROUTE nr, label
    cmp $\nr, %rax
    je \label
    .endm
    /* rbp frame, application red zone skipped, 16-byte aligned, registers saved. */
    .macro RW_ENTER
    lea -128(%rsp), %rsp
    push %rbp
    mov %rsp, %rbp
    and $-16, %rsp
    sub $368, %rsp
    call .Lrw_save
    cld
    .endm
    /* Back to the state at entry (return address at rsp) with rax = syscall number. */
    .macro RW_LEAVE_WITH_NR skip
    call .Lrw_restore_args
    mov 0(%rsp), %rax
    mov %rbp, %rsp
    pop %rbp
    lea \skip(%rsp), %rsp
    .endm

    RW_ROUTE )" LIVEIO_STR(SYS_rt_sigreturn) R"(, .Lrw_sigreturn
    RW_ROUTE )" LIVEIO_STR(SYS_clone) R"(, .Lrw_stub
    RW_ROUTE )" LIVEIO_STR(SYS_vfork) R"(, .Lrw_stub
    RW_ROUTE )" LIVEIO_STR(SYS_clone3) R"(, .Lrw_stub
    RW_ROUTE )" LIVEIO_STR(SYS_execve) R"(, .Lrw_stub
    RW_ROUTE )" LIVEIO_STR(SYS_execveat) R"(, .Lrw_stub
    RW_ROUTE )" LIVEIO_STR(SYS_exit) R"(, .Lrw_noreturn
    RW_ROUTE )" LIVEIO_STR(SYS_exit_group) R"(, .Lrw_noreturn

.Lrw_dispatch:
    RW_ENTER
    /* rcx and r11 are free: the kernel clobbers them on every syscall. */
    mov liveio_rewrite_frame@gottpoff(%rip), %r11
    mov %fs:(%r11), %rcx
    mov %rcx, 56(%rsp)
    mov %rbp, %fs:(%r11)
    mov %rsp, %rdi
    call liveio_rewrite_dispatch
    mov liveio_rewrite_frame@gottpoff(%rip), %r11
    mov 56(%rsp), %rcx
    mov %rcx, %fs:(%r11)
    call .Lrw_restore_args
    mov %rbp, %rsp
    pop %rbp
    lea 128(%rsp), %rsp
    ret

    /* The call goes through a stub that executes `syscall` and jumps back to the
       instruction after the site, so nothing depends on the stack after the kernel returns. */
.Lrw_stub:
    RW_ENTER
    mov 136(%rbp), %rdi
    call liveio_rewrite_stub_for
    test %rax, %rax
    jz .Lrw_no_stub
    mov %rax, 136(%rbp)
    RW_LEAVE_WITH_NR 136
    /* [rsp-8] holds the stub: below rsp but above the 128 bytes a signal frame skips. */
    jmp *-8(%rsp)
.Lrw_no_stub:
    /* Not a rewritten site (cannot happen for sites liveio wrote): dispatch normally. */
    RW_LEAVE_WITH_NR 128
    jmp .Lrw_dispatch

.Lrw_sigreturn:
    lea 8(%rsp), %rsp
    syscall
    ud2

.Lrw_noreturn:
    syscall
    ud2

    /* Helpers called with one extra return address on the stack: the frame is at rsp+8. */
.Lrw_save:
    mov %rax, 8(%rsp)
    mov %rdi, 16(%rsp)
    mov %rsi, 24(%rsp)
    mov %rdx, 32(%rsp)
    mov %r10, 40(%rsp)
    mov %r8, 48(%rsp)
    mov %r9, 56(%rsp)
    movaps %xmm0, 72(%rsp)
    movaps %xmm1, 88(%rsp)
    movaps %xmm2, 104(%rsp)
    movaps %xmm3, 120(%rsp)
    movaps %xmm4, 136(%rsp)
    movaps %xmm5, 152(%rsp)
    movaps %xmm6, 168(%rsp)
    movaps %xmm7, 184(%rsp)
    movaps %xmm8, 200(%rsp)
    movaps %xmm9, 216(%rsp)
    movaps %xmm10, 232(%rsp)
    movaps %xmm11, 248(%rsp)
    movaps %xmm12, 264(%rsp)
    movaps %xmm13, 280(%rsp)
    movaps %xmm14, 296(%rsp)
    movaps %xmm15, 312(%rsp)
    mov %rbx, 328(%rsp)
    mov %r12, 336(%rsp)
    mov %r13, 344(%rsp)
    mov %r14, 352(%rsp)
    mov %r15, 360(%rsp)
    ret

.Lrw_restore_args:
    mov 16(%rsp), %rdi
    mov 24(%rsp), %rsi
    mov 32(%rsp), %rdx
    mov 40(%rsp), %r10
    mov 48(%rsp), %r8
    mov 56(%rsp), %r9
    movaps 72(%rsp), %xmm0
    movaps 88(%rsp), %xmm1
    movaps 104(%rsp), %xmm2
    movaps 120(%rsp), %xmm3
    movaps 136(%rsp), %xmm4
    movaps 152(%rsp), %xmm5
    movaps 168(%rsp), %xmm6
    movaps 184(%rsp), %xmm7
    movaps 200(%rsp), %xmm8
    movaps 216(%rsp), %xmm9
    movaps 232(%rsp), %xmm10
    movaps 248(%rsp), %xmm11
    movaps 264(%rsp), %xmm12
    movaps 280(%rsp), %xmm13
    movaps 296(%rsp), %xmm14
    movaps 312(%rsp), %xmm15
    ret
    .size liveio_rewrite_entry, . - liveio_rewrite_entry
    .globl liveio_rewrite_entry_end
    .hidden liveio_rewrite_entry_end
liveio_rewrite_entry_end:
    .popsection
)");

// flatten: call_raw inlined here, so only one function returns after the kernel does (each
// `ret` after a syscall mispredicts: the kernel leaves the return stack buffer useless).
// In a section of its own: evacuation (syscall_rewrite_evacuate.cpp) finds the syscall
// instructions it makes for the application between __start_/__stop_liveio_rw_dispatch.
extern "C" __attribute__((visibility("hidden"), used, flatten, section("liveio_rw_dispatch"))) long
liveio_rewrite_dispatch(const liveio::hook::SyscallCall* call) {
    return liveio::hook::Dispatcher::instance().call_raw(liveio::hook::Mechanism::SyscallRewrite,
                                                         *call);
}

extern "C" __attribute__((visibility("hidden"), used, flatten, section("liveio_rw_dispatch")))
uintptr_t
liveio_rewrite_stub_for(uintptr_t return_address) {
    return liveio::hook::RewriteStubs::instance().find(return_address - 2);
}
