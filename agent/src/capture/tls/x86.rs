//! Just enough x86-64 decoding to place uprobes well: whether a function starts with an
//! instruction the kernel emulates (no single-step per hit), and whether an exported wrapper
//! passes its arguments on unchanged to the function it calls.

/// How far into an exported function the call to its internal function is looked for.
pub const WRAPPER_SCAN: usize = 96;

/// Whether `code` starts with an instruction x86 uprobes emulate rather than single-step, of
/// those a function begins with: `push %reg` (with or without a REX.B prefix).
pub fn emulated_entry(code: &[u8]) -> bool {
    matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..])
}

/// The target (relative to the start of `code`) of the first instruction of `code` when it
/// is a wrapper that passes its register arguments on unchanged: only `push %reg`, `sub
/// $imm8,%rsp` and copies of registers into callee-saved ones (`mov %reg,%rbx/%rbp/%r12-15`)
/// before a `call rel32`. The callee then receives exactly the wrapper's arguments, whatever
/// its declared signature says.
pub fn passthrough_call(code: &[u8]) -> Option<i64> {
    let mut i = 0;
    while i < 32 {
        match code.get(i..)? {
            [0x50..=0x57, ..] => i += 1,
            [0x41, 0x50..=0x57, ..] => i += 2,
            // sub $imm8,%rsp
            [0x48, 0x83, 0xec, _, ..] => i += 4,
            // mov %r64,%r64 (89 /r, register form) into rbx, rbp or r12-r15.
            [rex @ (0x48 | 0x49 | 0x4c | 0x4d), 0x89, modrm, ..] if modrm >> 6 == 3 => {
                let rm = (modrm & 7) | if rex & 1 != 0 { 8 } else { 0 };
                if !matches!(rm, 3 | 5 | 12..=15) {
                    return None;
                }
                i += 3;
            }
            [0xe8, a, b, c, d, ..] => {
                let rel = i32::from_le_bytes([*a, *b, *c, *d]) as i64;
                return Some(i as i64 + 5 + rel);
            }
            _ => return None,
        }
    }
    None
}

/// Whether `code` has a `call rel32` to `target` (relative to the start of `code`) in its
/// first [`WRAPPER_SCAN`] bytes.
pub fn calls(code: &[u8], target: i64) -> bool {
    let n = code.len().min(WRAPPER_SCAN);
    (0..n).any(|i| {
        code.get(i..i + 5).is_some_and(|c| {
            c[0] == 0xe8
                && i as i64 + 5 + i32::from_le_bytes([c[1], c[2], c[3], c[4]]) as i64 == target
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_internal_call_of_a_wrapper() {
        // Debian's OpenSSL 3.0 SSL_read_ex: sub $0x8,%rsp; call ssl_read_internal.
        let ex = [
            0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2,
        ];
        assert_eq!(passthrough_call(&ex), Some(0x35290 - 0x354c0));
        // libcrypto's BIO_write_ex: push %rbp; mov %rdi,%rbp; push %rbx; mov %rdx,%rbx;
        // sub $0x8,%rsp; call bio_write_intern (0x108910 -> 0x108270).
        let bio = [
            0x55, 0x48, 0x89, 0xfd, 0x53, 0x48, 0x89, 0xd3, 0x48, 0x83, 0xec, 0x08, 0xe8, 0x4f,
            0xf9, 0xff, 0xff,
        ];
        assert_eq!(passthrough_call(&bio), Some(0x108270 - 0x108910));
        // OpenSSL 3.2+ SSL_write_ex moves its 4th argument to the 5th (mov %rcx,%r8; xor
        // %ecx,%ecx): the callee's arguments differ, not a pass-through.
        let moved = [
            0x48, 0x83, 0xec, 0x08, 0x49, 0x89, 0xc8, 0x31, 0xc9, 0xe8, 0, 0, 0, 0,
        ];
        assert_eq!(passthrough_call(&moved), None);
        // A write to an argument register (mov %rsp,%rcx) before the call.
        let clobber = [0x48, 0x89, 0xe1, 0xe8, 0, 0, 0, 0];
        assert_eq!(passthrough_call(&clobber), None);
        assert_eq!(passthrough_call(&[0x48, 0x83, 0xec, 0x08]), None);
        // SSL_read: sub $0x18,%rsp; ...; call ssl_read_internal at +0x1e.
        let mut plain = vec![0x90; 0x40];
        plain[0x1e..0x23].copy_from_slice(&[0xe8, 0x3d, 0xfe, 0xff, 0xff]);
        assert!(calls(&plain, 0x35290 - 0x35430));
        assert!(!calls(&plain, 0x35290 - 0x35430 + 1));
        // push %r13 / push %rbp are emulated, sub $0x18,%rsp / xor %eax,%eax are not.
        assert!(emulated_entry(&[0x41, 0x55]) && emulated_entry(&[0x55]));
        assert!(!emulated_entry(&[0x48, 0x83, 0xec, 0x18]) && !emulated_entry(&[0x31, 0xc0]));
    }
}
