/* Register-saving entry points for userspace uprobes (uprobe.h). Both build a struct pt_regs
 * (x86-64 uapi layout, 168 bytes) on the stack, call into C, restore every general register
 * and the flags, and jump to the address the C side returned (through r11, which the ABI
 * leaves scratch at function entry and at return).
 *
 * pt_regs offsets: r15 0, r14 8, r13 16, r12 24, rbp 32, rbx 40, r11 48, r10 56, r9 64,
 * r8 72, rax 80, rcx 88, rdx 96, rsi 104, rdi 112, orig_rax 120, rip 128, cs 136,
 * eflags 144, rsp 152, ss 160. */

    .text

.macro SAVE_REGS
    lea -168(%rsp), %rsp
    mov %r15, 0(%rsp)
    mov %r14, 8(%rsp)
    mov %r13, 16(%rsp)
    mov %r12, 24(%rsp)
    mov %rbp, 32(%rsp)
    mov %rbx, 40(%rsp)
    mov %r11, 48(%rsp)
    mov %r10, 56(%rsp)
    mov %r9, 64(%rsp)
    mov %r8, 72(%rsp)
    mov %rax, 80(%rsp)
    mov %rcx, 88(%rsp)
    mov %rdx, 96(%rsp)
    mov %rsi, 104(%rsp)
    mov %rdi, 112(%rsp)
    movq $-1, 120(%rsp)
    movq $0x33, 136(%rsp)
    pushfq
    popq 144(%rsp)
    lea 168(%rsp), %rax
    mov %rax, 152(%rsp)
    movq $0x2b, 160(%rsp)
.endm

.macro RESTORE_REGS_AND_JUMP_TO_RAX frame
    mov %rax, %r11
    pushq 144(%rsp)
    popfq
    mov 0(%rsp), %r15
    mov 8(%rsp), %r14
    mov 16(%rsp), %r13
    mov 24(%rsp), %r12
    mov 32(%rsp), %rbp
    mov 40(%rsp), %rbx
    mov 56(%rsp), %r10
    mov 64(%rsp), %r9
    mov 72(%rsp), %r8
    mov 80(%rsp), %rax
    mov 88(%rsp), %rcx
    mov 96(%rsp), %rdx
    mov 104(%rsp), %rsi
    mov 112(%rsp), %rdi
    lea \frame(%rsp), %rsp
    jmp *%r11
.endm

/* Reached from a probe's thunk at function entry with r11 = the probe. At entry
 * rsp = 8 mod 16, so after 168 bytes of pt_regs it is 16-byte aligned for the call. */
    .globl liveio_uprobe_entry
    .hidden liveio_uprobe_entry
    .type liveio_uprobe_entry, @function
liveio_uprobe_entry:
    SAVE_REGS
    mov (%r11), %rax          /* probe->address: the probed function */
    mov %rax, 128(%rsp)
    mov %r11, %rdi
    mov %rsp, %rsi
    call liveio_uprobe_on_entry
    RESTORE_REGS_AND_JUMP_TO_RAX 168
    .size liveio_uprobe_entry, .-liveio_uprobe_entry

/* Where a probed function returns when a uretprobe swapped its return address. Here
 * rsp = 0 mod 16 (the return popped 8 bytes), so 168 + 8 bytes keep the call aligned. */
    .globl liveio_uretprobe_return
    .hidden liveio_uretprobe_return
    .type liveio_uretprobe_return, @function
liveio_uretprobe_return:
    push $0                   /* alignment slot, dropped on the way out */
    SAVE_REGS
    addq $8, 152(%rsp)        /* the stack pointer as the caller sees it */
    lea liveio_uretprobe_return(%rip), %rax
    mov %rax, 128(%rsp)
    mov %rsp, %rdi
    call liveio_uretprobe_on_return
    RESTORE_REGS_AND_JUMP_TO_RAX 176  /* pt_regs and the alignment slot */
    .size liveio_uretprobe_return, .-liveio_uretprobe_return

    .section .note.GNU-stack,"",@progbits
