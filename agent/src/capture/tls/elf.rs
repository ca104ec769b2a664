//! ELF files as the TLS probes read them: mapped in place, and the file offsets of the
//! functions they export.

use std::path::Path;

use anyhow::Result;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// A file mapped read-only: the symbol tables of a 100 MB `node` are read in place, without
/// a copy and without a read per symbol name.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Map the file at `path`.
    pub fn open(path: &Path) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        // Shared, not private: the kernel writes the breakpoints of uprobes already on the
        // file (another tracer's, or a previous agent's still being released) into every
        // private mapping that may execute, so a private one would show their int3 where
        // the code's first instruction is. It never writes them into shared mappings.
        // SAFETY: a fresh read-only mapping of a file we opened; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` for as long as the mapping lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// File offsets of the `wanted` functions that a binary exports in its dynamic symbol table (the
/// offset is what a uprobe is set at: the symbol's address translated through its section),
/// and where each one's code is in the file: `(symbol, offset, end of its section)`.
pub fn exported_offsets_in(
    data: &[u8],
    wanted: &[&'static str],
) -> Result<Vec<(&'static str, u64, u64)>> {
    let obj = object::File::parse(data)?;
    defined_in(&obj, obj.dynamic_symbols(), |name| {
        wanted.iter().find(|w| w.as_bytes() == name).copied()
    })
}

/// What `pick` makes of the functions a binary's symbol table (`.symtab`) names, with their
/// file offsets and section ends, as [`exported_offsets_in`].
pub fn symbol_offsets_in<T>(
    data: &[u8],
    pick: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Vec<(T, u64, u64)>> {
    let obj = object::File::parse(data)?;
    defined_in(&obj, obj.symbols(), pick)
}

/// The defined symbols among `symbols` that `pick` names, at their file offsets.
fn defined_in<'d, T>(
    obj: &object::File<'d>,
    symbols: impl Iterator<Item = object::Symbol<'d, 'd>>,
    mut pick: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Vec<(T, u64, u64)>> {
    let mut out = Vec::new();
    for sym in symbols {
        if !sym.is_definition() {
            continue;
        }
        let Ok(name) = sym.name_bytes() else { continue };
        let Some(picked) = pick(name) else { continue };
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = obj.section_by_index(index)?;
        let Some((offset, size)) = section.file_range() else {
            continue;
        };
        let at = sym.address() - section.address() + offset;
        out.push((picked, at, offset + size));
    }
    Ok(out)
}

#[cfg(test)]
pub fn exported_offsets(path: &Path, wanted: &[&'static str]) -> Result<Vec<(&'static str, u64)>> {
    let data = Mapped::open(path)?;
    Ok(exported_offsets_in(data.bytes(), wanted)?
        .into_iter()
        .map(|(s, o, _)| (s, o))
        .collect())
}
