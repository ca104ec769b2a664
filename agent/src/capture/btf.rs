//! A small reader of BTF (the kernel's BPF Type Format), enough to find the byte offset of a
//! field inside a kernel structure, following nested and anonymous members.
//!
//! mcptap reads `/sys/kernel/btf/vmlinux` at start and hands the offsets to the kernel programs
//! (see [`mcptap_abi::KernelOffsets`]) so that one binary runs on any kernel with BTF.

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use mcptap_abi::{KernelOffsets, OFFSET_MISSING};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits from the start of the enclosing type.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Size for INT/STRUCT/UNION/ENUM, referenced type for PTR/TYPEDEF/modifiers.
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types by id and the string table.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b
        .get(off..off + 4)
        .ok_or_else(|| anyhow!("BTF truncated at byte {off}"))?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

/// The type and string sections of BTF bytes, after checking the header.
fn sections(raw: &[u8]) -> Result<(&[u8], &[u8])> {
    ensure!(raw.len() >= 24, "BTF shorter than its header");
    let magic = u16::from_le_bytes([raw[0], raw[1]]);
    ensure!(
        magic == MAGIC,
        "bad BTF magic {magic:#x} (big-endian BTF is not supported)"
    );
    let hdr_len = u32_at(raw, 4)? as usize;
    let type_off = u32_at(raw, 8)? as usize;
    let type_len = u32_at(raw, 12)? as usize;
    let str_off = u32_at(raw, 16)? as usize;
    let str_len = u32_at(raw, 20)? as usize;
    let types = raw
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .ok_or_else(|| anyhow!("BTF type section out of bounds"))?;
    let strings = raw
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or_else(|| anyhow!("BTF string section out of bounds"))?;
    Ok((types, strings))
}

/// The type at `*pos` of the type section (type id `id`); moves `pos` past it.
fn parse_type(types_raw: &[u8], pos: &mut usize, id: usize) -> Result<Type> {
    let name = u32_at(types_raw, *pos)?;
    let info = u32_at(types_raw, *pos + 4)?;
    let size_or_type = u32_at(types_raw, *pos + 8)?;
    *pos += 12;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let mut members = Vec::new();
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => *pos += 4,
        KIND_ARRAY => *pos += 12,
        KIND_STRUCT | KIND_UNION => {
            for i in 0..vlen {
                let m = *pos + i * 12;
                let raw_off = u32_at(types_raw, m + 8)?;
                members.push(Member {
                    name: u32_at(types_raw, m)?,
                    ty: u32_at(types_raw, m + 4)?,
                    // With kind_flag the top 8 bits hold a bitfield size.
                    bit_offset: if kind_flag {
                        raw_off & 0x00ff_ffff
                    } else {
                        raw_off
                    },
                });
            }
            *pos += vlen * 12;
        }
        KIND_ENUM | KIND_FUNC_PROTO => *pos += vlen * 8,
        KIND_DATASEC | KIND_ENUM64 => *pos += vlen * 12,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
        other => bail!("unknown BTF kind {other} at type id {id}"),
    }
    Ok(Type {
        name,
        kind,
        size_or_type,
        members,
    })
}

impl Btf {
    /// Parse the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let raw = std::fs::read(path).with_context(|| {
            format!(
                "cannot read {path}: this kernel exposes no BTF (it needs CONFIG_DEBUG_INFO_BTF=y); \
                 mcptap resolves kernel structure layouts from it"
            )
        })?;
        Self::parse(&raw).with_context(|| format!("parsing {path}"))
    }

    /// Parse little-endian BTF bytes.
    pub fn parse(raw: &[u8]) -> Result<Self> {
        let (types_raw, strings) = sections(raw)?;
        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut pos = 0;
        while pos < types_raw.len() {
            let t = parse_type(types_raw, &mut pos, types.len())?;
            types.push(t);
        }
        let mut btf = Btf {
            types,
            strings: strings.to_vec(),
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let name = btf.str(t.name).to_string();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn str(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let Some(t) = self.types.get(id as usize) else {
                return id;
            };
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return id,
            }
        }
        id
    }

    /// Bit offset of `field` in struct/union `id`, searching anonymous members too; returns
    /// the offset and the member's type.
    fn find_member(&self, id: u32, field: &str) -> Option<(u32, u32)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return None;
        }
        for m in &t.members {
            if self.str(m.name) == field {
                return Some((m.bit_offset, m.ty));
            }
        }
        for m in &t.members {
            if m.name == 0
                && let Some((off, ty)) = self.find_member(m.ty, field)
            {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// Byte offset of a (possibly nested, dot-separated) field in a named struct, e.g.
    /// `offset_of("sock", "__sk_common.skc_family")`.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32> {
        let mut id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| anyhow!("struct {strukt} not found in kernel BTF"))?;
        let mut bits = 0;
        for field in path.split('.') {
            let (off, ty) = self
                .find_member(id, field)
                .ok_or_else(|| anyhow!("field {strukt}.{path} not found in kernel BTF"))?;
            bits += off;
            id = ty;
        }
        ensure!(
            bits % 8 == 0,
            "field {strukt}.{path} is a bitfield; mcptap cannot read it"
        );
        Ok(bits / 8)
    }

    /// Like [`Btf::offset_of`], with [`OFFSET_MISSING`] for a field this kernel lacks.
    fn optional_offset(&self, strukt: &str, path: &str) -> u32 {
        self.offset_of(strukt, path).unwrap_or(OFFSET_MISSING)
    }

    /// The offsets mcptap's programs need, resolved for this kernel.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets> {
        let socket_in_alloc = self.offset_of("socket_alloc", "socket")?;
        let inode_in_alloc = self.offset_of("socket_alloc", "vfs_inode")?;
        Ok(KernelOffsets {
            task_tgid: self.offset_of("task_struct", "tgid")?,
            task_files: self.offset_of("task_struct", "files")?,
            files_fdt: self.offset_of("files_struct", "fdt")?,
            fdt_max_fds: self.offset_of("fdtable", "max_fds")?,
            fdt_fd: self.offset_of("fdtable", "fd")?,
            file_inode: self.offset_of("file", "f_inode")?,
            file_private_data: self.offset_of("file", "private_data")?,
            inode_mode: self.offset_of("inode", "i_mode")?,
            inode_ino: self.offset_of("inode", "i_ino")?,
            socket_type: self.offset_of("socket", "type")?,
            socket_sk: self.offset_of("socket", "sk")?,
            sock_family: self.offset_of("sock", "__sk_common.skc_family")?,
            sock_socket: self.offset_of("sock", "sk_socket")?,
            unix_peer: self.offset_of("unix_sock", "peer")?,
            socket_to_inode: inode_in_alloc
                .checked_sub(socket_in_alloc)
                .ok_or_else(|| anyhow!("socket_alloc places vfs_inode before socket"))?,
            sock_daddr: self.offset_of("sock", "__sk_common.skc_daddr")?,
            sock_rcv_saddr: self.offset_of("sock", "__sk_common.skc_rcv_saddr")?,
            sock_dport: self.offset_of("sock", "__sk_common.skc_dport")?,
            sock_num: self.offset_of("sock", "__sk_common.skc_num")?,
            sock_v6_daddr: self.optional_offset("sock", "__sk_common.skc_v6_daddr"),
            sock_v6_rcv_saddr: self.optional_offset("sock", "__sk_common.skc_v6_rcv_saddr"),
            unix_addr: self.offset_of("unix_sock", "addr")?,
            unix_address_len: self.offset_of("unix_address", "len")?,
            unix_address_name: self.offset_of("unix_address", "name")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes by hand: the format is simple enough to write the fixture exactly.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn push(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size: u32) -> u32 {
            let n = self.s(name);
            let info = vlen | (kind << 24) | ((kflag as u32) << 31);
            for v in [n, info, size] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.push(name, KIND_INT, 0, false, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
            id
        }
        fn strukt(
            &mut self,
            name: &str,
            size: u32,
            kflag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.push(name, KIND_STRUCT, members.len() as u32, kflag, size);
            for &(m, ty, off) in members {
                let n = self.s(m);
                for v in [n, ty, off] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }
        fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1);
            out.push(0);
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn nested_anonymous_and_bitfield_members() {
        let mut b = Builder::new();
        let u16t = b.int("unsigned short", 2);
        let u32t = b.int("unsigned int", 4);
        // struct sock_common { u32 skc_daddr; u16 skc_family @ 128 bits }
        let common = b.strukt(
            "sock_common",
            24,
            false,
            &[("skc_daddr", u32t, 0), ("skc_family", u16t, 128)],
        );
        // anonymous struct { u32 hidden @ 32 }
        let anon = b.strukt("", 8, false, &[("hidden", u32t, 32)]);
        // struct sock { sock_common __sk_common @0; anon @ 256; bitfield @ 320 (kflag) }
        b.strukt(
            "sock",
            64,
            true,
            &[
                ("__sk_common", common, 0),
                ("", anon, 256),
                ("bits", u32t, (3 << 24) | 323),
            ],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.offset_of("sock", "__sk_common.skc_family").unwrap(), 16);
        assert_eq!(btf.offset_of("sock", "hidden").unwrap(), 36);
        assert!(
            btf.offset_of("sock", "bits")
                .unwrap_err()
                .to_string()
                .contains("bitfield")
        );
        assert!(btf.offset_of("sock", "nope").is_err());
        assert!(btf.offset_of("nostruct", "x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(&[0u8; 10]).is_err());
        assert!(Btf::parse(&[0u8; 64]).is_err());
    }

    /// On a machine with BTF, every offset mcptap needs resolves and looks sane.
    #[test]
    fn running_kernel_offsets_resolve() {
        // mcptap cannot run without BTF: a machine without it fails here, never skips.
        let btf = Btf::from_sys_fs().expect("this machine's /sys/kernel/btf/vmlinux");
        let off = btf.kernel_offsets().unwrap();
        assert!(off.task_files > off.task_tgid || off.task_tgid > 0);
        assert!(off.file_inode > 0 && off.inode_ino > 0);
        assert!(off.socket_to_inode > 0);
    }
}
