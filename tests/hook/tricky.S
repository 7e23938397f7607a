/* Functions with prologue shapes the inline hooker must relocate or refuse. Written in
 * assembly so the compiler cannot change the shapes. */
    .text

/* RIP-relative load in the first instruction: returns tricky_value + edi. */
    .globl tricky_rip_load
    .type tricky_rip_load, @function
    .p2align 4
tricky_rip_load:
    movl .Ltricky_value(%rip), %eax
    addl %edi, %eax
    ret
    .size tricky_rip_load, .-tricky_rip_load

/* Three bytes long: too short for a 5-byte jump. */
    .globl tricky_short
    .type tricky_short, @function
    .p2align 4
tricky_short:
    movl %edi, %eax
    ret
    .size tricky_short, .-tricky_short

/* A loop whose back edge targets offset 2, inside the first 5 bytes. Returns max(edi, 1). */
    .globl tricky_jump_back
    .type tricky_jump_back, @function
    .p2align 4
tricky_jump_back:
    xorl %eax, %eax
1:  addl $1, %eax
    cmpl %edi, %eax
    jl 1b
    ret
    .size tricky_jump_back, .-tricky_jump_back

/* A call in the prologue: returns 7 + edi. */
    .globl tricky_call_prologue
    .type tricky_call_prologue, @function
    .p2align 4
tricky_call_prologue:
    call .Ltricky_seven
    addl %edi, %eax
    ret
    .size tricky_call_prologue, .-tricky_call_prologue

/* A conditional short jump in the prologue: returns 2 when edi == 0, else 1. */
    .globl tricky_jcc_prologue
    .type tricky_jcc_prologue, @function
    .p2align 4
tricky_jcc_prologue:
    testl %edi, %edi
    je .Ltricky_zero
    movl $1, %eax
    ret
.Ltricky_zero:
    movl $2, %eax
    ret
    .size tricky_jcc_prologue, .-tricky_jcc_prologue

    .p2align 4
.Ltricky_seven:
    movl $7, %eax
    ret

    .data
    .p2align 2
.Ltricky_value:
    .long 40

    .section .note.GNU-stack,"",@progbits
