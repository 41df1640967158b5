//! What a module would cost and expose before wasmi compiles it: a walk over
//! its sections with `wasmparser` (already inside wasmi), reading counts and
//! headers only, never function bodies.
//!
//! It catches what validation accepts but the host must not: required
//! exports that are re-exported host imports (a stage call would then run a
//! host function with no plugin code around it), 64-bit memories (the ABI's
//! pointers are `i32`), element and data segments whose instantiation
//! would cost far more host memory than the module's size suggests, and
//! functions with so many locals that a call costs far more time than the
//! fuel it is charged.

use wasmparser::{ElementItems, ExternalKind, Parser, Payload, TypeRef};

use crate::{ErrorKind, Result};

/// Host memory one element-segment item costs when instantiated (wasmi
/// keeps each as a reference of up to 16 bytes, plus its slot in a table).
pub const BYTES_PER_ELEMENT_ITEM: u64 = 32;

/// Most locals one function may declare. wasmi charges a call the same
/// fuel whatever its frame's size, and sets up every local on each call:
/// 20,000 locals made a call ~2 µs where a call without costs a few ns for
/// the same fuel (`cargo bench --bench hostile`). Compiled plugins stay far
/// below this (the catalogue plugins: at most 92).
pub const MAX_LOCALS_PER_FUNCTION: u64 = 1024;

/// The instantiation footprint of a module, from its section headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModuleShape {
    /// Items of every element segment.
    pub element_items: u64,
    /// Bytes of every data segment.
    pub data_bytes: u64,
}

impl ModuleShape {
    /// Host memory instantiating the module's segments costs, at most.
    pub fn instantiation_bytes(&self) -> u64 {
        self.element_items * BYTES_PER_ELEMENT_ITEM + self.data_bytes
    }
}

fn invalid(message: String) -> crate::Error {
    ErrorKind::InvalidModule(message).into()
}

/// Walks `wasm`'s sections and checks the exports, memories and segments.
///
/// # Errors
/// [`ErrorKind::InvalidModule`] for a section that does not parse, a 64-bit
/// memory or a segment footprint above `max_instantiation_bytes`;
/// [`ErrorKind::MissingExport`] for a required export that is an import.
pub fn check_module_shape(
    wasm: &[u8],
    required_functions: &[&str],
    max_instantiation_bytes: u64,
) -> Result<ModuleShape> {
    let mut shape = ModuleShape::default();
    let mut imported_functions = 0u32;
    let parse_error = |error: wasmparser::BinaryReaderError| invalid(error.to_string());
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(parse_error)? {
            Payload::ImportSection(imports) => {
                for import in imports {
                    match import.map_err(parse_error)?.ty {
                        TypeRef::Func(_) => imported_functions += 1,
                        TypeRef::Memory(memory) if memory.memory64 => return Err(memory64()),
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(memories) => {
                for memory in memories {
                    if memory.map_err(parse_error)?.memory64 {
                        return Err(memory64());
                    }
                }
            }
            Payload::ExportSection(exported) => {
                for export in exported {
                    let export = export.map_err(parse_error)?;
                    let is_import =
                        export.kind == ExternalKind::Func && export.index < imported_functions;
                    if is_import && required_functions.contains(&export.name) {
                        return Err(ErrorKind::MissingExport {
                            name: export.name.to_string(),
                            detail: "it re-exports an imported host function; it must be the \
                                     plugin's own code"
                                .into(),
                        }
                        .into());
                    }
                }
            }
            Payload::ElementSection(segments) => {
                for segment in segments {
                    shape.element_items += u64::from(match segment.map_err(parse_error)?.items {
                        ElementItems::Functions(items) => items.count(),
                        ElementItems::Expressions(_, items) => items.count(),
                    });
                }
            }
            Payload::DataSection(segments) => {
                for segment in segments {
                    shape.data_bytes += segment.map_err(parse_error)?.data.len() as u64;
                }
            }
            // Only the local declarations of each body are read; the code
            // is wasmi's to validate.
            Payload::CodeSectionEntry(body) => {
                let mut locals = body.get_locals_reader().map_err(parse_error)?;
                let mut count = 0u64;
                for _ in 0..locals.get_count() {
                    count += u64::from(locals.read().map_err(parse_error)?.0);
                }
                if count > MAX_LOCALS_PER_FUNCTION {
                    return Err(invalid(format!(
                        "a function declares {count} locals, more than \
                         {MAX_LOCALS_PER_FUNCTION}"
                    )));
                }
            }
            _ => {}
        }
    }
    if shape.instantiation_bytes() > max_instantiation_bytes {
        return Err(invalid(format!(
            "its element and data segments ({} items, {} bytes) would take {} bytes of host \
             memory to instantiate, more than max_memory_per_plugin ({max_instantiation_bytes} \
             bytes)",
            shape.element_items,
            shape.data_bytes,
            shape.instantiation_bytes()
        )));
    }
    Ok(shape)
}

fn memory64() -> crate::Error {
    invalid(
        "it declares a 64-bit memory (memory64); plugins use one 32-bit memory (docs/ABI.md)"
            .into(),
    )
}
