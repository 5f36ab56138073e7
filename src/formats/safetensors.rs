//! safetensors reader: one file or a sharded folder (model.safetensors.index.json).
//! Headers are read up front; tensor bytes on demand, one tensor at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Largest JSON header we accept (real headers are KBs to a few MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    /// Integer buffers (e.g. BERT's `position_ids`): listed, never weights.
    Integer(&'static str),
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::Integer("I64"),
            "I32" => Dtype::Integer("I32"),
            "I16" => Dtype::Integer("I16"),
            "I8" => Dtype::Integer("I8"),
            "U8" => Dtype::Integer("U8"),
            "BOOL" => Dtype::Integer("BOOL"),
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::Integer("I64") => 8,
            Dtype::Integer("I32") => 4,
            Dtype::Integer("I16") => 2,
            Dtype::Integer(_) => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::Integer(name) => name,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub file: PathBuf,
    /// Absolute byte offset in `file`.
    pub offset: u64,
    pub len: u64,
}

impl Tensor {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Reads the whole tensor as f32.
    pub fn read_f32(&self) -> Result<Vec<f32>> {
        let mut file = File::open(&self.file).map_err(|e| Error::io(&self.file, e))?;
        self.read_f32_range(&mut file, 0, self.elements())
    }

    /// Reads elements [first, first + count) (row-major) as f32.
    pub fn read_f32_range(&self, file: &mut File, first: usize, count: usize) -> Result<Vec<f32>> {
        let size = self.dtype.size();
        let mut bytes = vec![0u8; count * size];
        file.seek(SeekFrom::Start(self.offset + (first * size) as u64)).map_err(|e| Error::io(&self.file, e))?;
        file.read_exact(&mut bytes)
            .map_err(|e| Error::format(self.file.display(), format!("reading tensor {}: {e}", self.name)))?;
        self.decode(&bytes)
    }

    /// Elements of this tensor's dtype, as f32.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        Ok(match self.dtype {
            Dtype::F32 => bytemuck::pod_collect_to_vec(bytes),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::Integer(name) => {
                return Err(Error::Unsupported {
                    what: format!("{name} tensor {} as weights", self.name),
                    supported: "F32, F16, BF16".into(),
                })
            }
        })
    }
}

/// Every tensor of a model folder (or of one file), by name.
pub fn read_headers(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let index = path.join("model.safetensors.index.json");
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(index.display(), format!("malformed JSON: {e}")))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(index.display(), "no weight_map object"))?;
            let mut files: Vec<PathBuf> =
                map.values().filter_map(|v| v.as_str()).map(|f| path.join(f)).collect::<Vec<_>>();
            files.sort();
            files.dedup();
            files
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            files
        }
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(Error::format(path.display(), "no .safetensors files"));
    }
    let mut tensors = BTreeMap::new();
    for file in files {
        for t in read_file_header(&file)? {
            tensors.insert(t.name.clone(), t);
        }
    }
    Ok(tensors)
}

fn read_file_header(path: &Path) -> Result<Vec<Tensor>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(|_| Error::format(path.display(), "truncated: no header length"))?;
    let header_len = header_length(len_bytes, file_len, &path.display().to_string())?;
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| Error::format(path.display(), format!("reading the header: {e}")))?;
    parse_header(&header, file_len, path)
}

/// The JSON header's length from a file's first 8 bytes, checked against the file's length.
pub fn header_length(first: [u8; 8], file_len: u64, file: &str) -> Result<u64> {
    let header_len = u64::from_le_bytes(first);
    if header_len > MAX_HEADER || header_len > file_len.saturating_sub(8) {
        let hint = if first.starts_with(b"<") { " (this looks like HTML)" } else { "" };
        return Err(Error::format(
            file,
            format!("header of {header_len} bytes does not fit a {file_len}-byte file{hint}"),
        ));
    }
    Ok(header_len)
}

/// The tensors a safetensors file of `file_len` bytes lists in its JSON
/// `header` (the bytes after the 8-byte length); `path` names the file.
pub fn parse_header(header: &[u8], file_len: u64, path: &Path) -> Result<Vec<Tensor>> {
    let header_len = header.len() as u64;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| Error::format(path.display(), format!("malformed JSON header: {e}")))?;
    let data_start = 8 + header_len;
    let mut tensors = Vec::new();
    for (name, entry) in json {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| Error::format(path.display(), format!("tensor {name}: {m}"));
        let dtype_name = entry.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
        let dtype = Dtype::parse(dtype_name).ok_or_else(|| Error::Unsupported {
            what: format!("dtype {dtype_name} of tensor {name} in {}", path.display()),
            supported: "F32, F16, BF16 (integer buffers are skipped)".into(),
        })?;
        let shape: Vec<usize> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets = entry.get("data_offsets").and_then(|o| o.as_array()).ok_or_else(|| bad("no data_offsets"))?;
        let (begin, end) = match offsets.as_slice() {
            [b, e] => (b.as_u64().ok_or_else(|| bad("bad offset"))?, e.as_u64().ok_or_else(|| bad("bad offset"))?),
            _ => return Err(bad("data_offsets must be [begin, end]")),
        };
        let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows"))?;
        if end < begin || end - begin != (elements * dtype.size()) as u64 {
            return Err(bad(&format!("{} bytes for shape {shape:?} of {}", end.saturating_sub(begin), dtype.name())));
        }
        if data_start + end > file_len {
            return Err(Error::format(
                path.display(),
                format!("truncated: tensor {name} ends at byte {} but the file has {file_len}", data_start + end),
            ));
        }
        tensors.push(Tensor {
            name,
            dtype,
            shape,
            file: path.to_path_buf(),
            offset: data_start + begin,
            len: end - begin,
        });
    }
    Ok(tensors)
}
