//! The phi-web model package: `model.json` plus binary shards, the one format
//! the runtime loads. Tensor bytes are already in the GPU layout of
//! [`crate::quant`], so the browser only copies them into buffers.
//!
//! Shards are consecutive pieces of one byte stream (at most `shard_bytes`
//! each); a tensor chunk is addressed by (shard, offset) and may continue
//! into the following shards. A matrix whose payload would exceed
//! [`MAX_CHUNK_BYTES`] is split into row chunks, each a complete GPU matrix.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::quant::{self, GpuLayout, WeightFormat};

/// The package format this version reads and writes. phi-web/2 (typed
/// activation, norm and pooling in the config) replaced phi-web/1; older
/// packages are refused with the command that converts them again.
pub const FORMAT: &str = "phi-web/2";
pub const MANIFEST: &str = "model.json";
/// WebGPU's default maxStorageBufferBindingSize: every device can bind this much.
pub const MAX_CHUNK_BYTES: u64 = 128 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    pub name: String,
    pub config: ModelConfig,
    /// File name of the HF tokenizer.json beside model.json, if any.
    pub tokenizer: Option<String>,
    /// The model's Jinja chat template.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Generation stops at any of these ids.
    pub stop_token_ids: Vec<u32>,
    /// How the weights were stored, e.g. "q4_1 (kept from GGUF)".
    pub quantization: String,
    pub source: String,
    pub tensors: Vec<TensorEntry>,
    pub shards: Vec<Shard>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Hugging Face name, e.g. "model.layers.0.self_attn.qkv_proj.weight".
    pub name: String,
    /// A [`WeightFormat`] name: f32, f16, q4_0, q4_1, q8_0.
    pub format: String,
    /// [rows, cols] for matrices, [n] for vectors.
    pub shape: Vec<usize>,
    pub chunks: Vec<Chunk>,
}

/// Rows of a tensor stored as payload then scales (see [`GpuLayout`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub rows: usize,
    pub shard: usize,
    pub offset: u64,
    pub payload_bytes: u64,
    pub scales_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shard {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

impl TensorEntry {
    pub fn weight_format(&self) -> Result<WeightFormat> {
        WeightFormat::parse(&self.format).ok_or_else(|| Error::Unsupported {
            what: format!("weight format {} of tensor {}", self.format, self.name),
            supported: "f32, f16, q4_0, q4_1, q8_0".into(),
        })
    }

    /// (rows, cols): a vector [n] is one row.
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [n] => (1, *n),
            [rows, cols] => (*rows, *cols),
            _ => (0, 0),
        }
    }
}

/// Streams tensor bytes into numbered shard files, hashing as it goes.
pub struct ShardWriter {
    dir: PathBuf,
    max: u64,
    shards: Vec<Shard>,
    current: Option<(BufWriter<File>, Sha256)>,
    current_bytes: u64,
}

impl ShardWriter {
    pub fn new(dir: &Path, shard_bytes: u64) -> ShardWriter {
        ShardWriter {
            dir: dir.to_path_buf(),
            max: shard_bytes.max(1),
            shards: Vec::new(),
            current: None,
            current_bytes: 0,
        }
    }

    /// Where the next byte will go: (shard index, offset).
    pub fn position(&self) -> (usize, u64) {
        match self.current {
            Some(_) if self.current_bytes < self.max => (self.shards.len(), self.current_bytes),
            Some(_) => (self.shards.len() + 1, 0),
            None => (self.shards.len(), 0),
        }
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.current.is_some() && self.current_bytes == self.max {
                self.close_current()?;
            }
            if self.current.is_none() {
                let path = self.dir.join(shard_name(self.shards.len()));
                let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
                self.current = Some((BufWriter::with_capacity(1 << 20, file), Sha256::new()));
                self.current_bytes = 0;
            }
            let n = (self.max - self.current_bytes).min(bytes.len() as u64) as usize;
            if let Some((file, hash)) = self.current.as_mut() {
                file.write_all(&bytes[..n]).map_err(|e| Error::io(&self.dir, e))?;
                hash.update(&bytes[..n]);
            }
            self.current_bytes += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((mut file, hash)) = self.current.take() {
            file.flush().map_err(|e| Error::io(&self.dir, e))?;
            self.shards.push(Shard {
                file: shard_name(self.shards.len()),
                bytes: self.current_bytes,
                sha256: hex(&hash.finalize()),
            });
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<Shard>> {
        self.close_current()?;
        Ok(self.shards)
    }
}

fn shard_name(index: usize) -> String {
    format!("shard-{index:05}.bin")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a package's shard bytes come from: files natively ([`Package`]), the
/// browser's Cache Storage through JavaScript in wasm (`web.rs`). Loading
/// reads tensor by tensor, so the whole model is never in memory at once.
#[allow(async_fn_in_trait)] // concrete types only; wasm futures are not Send
pub trait ShardSource {
    fn manifest(&self) -> &Manifest;

    /// `len` bytes starting at (shard, offset), continuing into later shards.
    async fn read_bytes(&self, shard: usize, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// One chunk of a tensor in GPU layout.
    async fn chunk_layout(&self, chunk: &Chunk) -> Result<GpuLayout> {
        let mut bytes = self.read_bytes(chunk.shard, chunk.offset, chunk.payload_bytes + chunk.scales_bytes).await?;
        let scales = bytes.split_off(chunk.payload_bytes as usize);
        Ok(GpuLayout { data: bytes, scales })
    }

    /// A whole tensor dequantized to f32 (all chunks, in row order).
    async fn tensor_f32(&self, entry: &TensorEntry) -> Result<Vec<f32>> {
        let format = entry.weight_format()?;
        let (_, cols) = entry.rows_cols();
        let mut out = Vec::new();
        for chunk in &entry.chunks {
            let layout = self.chunk_layout(chunk).await?;
            let gguf = quant::from_gpu_layout(format, &layout, chunk.rows * cols)?;
            out.extend(quant::dequantize(format, &gguf)?);
        }
        Ok(out)
    }

    fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.manifest().tensors.iter().find(|t| t.name == name)
    }

    /// A handle that reads chunks again after loading (the expert cache
    /// uploads an expert on a miss); None where the source cannot.
    fn reader(&self) -> Option<Rc<dyn ChunkReader>> {
        None
    }
}

/// Reads chunks in GPU layout after loading: a package's files natively, the
/// browser's Cache Storage in wasm.
pub trait ChunkReader {
    fn read_chunk<'a>(&'a self, chunk: &'a Chunk) -> Pin<Box<dyn Future<Output = Result<GpuLayout>> + 'a>>;
}

impl<S: ShardSource> ChunkReader for S {
    fn read_chunk<'a>(&'a self, chunk: &'a Chunk) -> Pin<Box<dyn Future<Output = Result<GpuLayout>> + 'a>> {
        Box::pin(self.chunk_layout(chunk))
    }
}

impl ShardSource for Package {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    async fn read_bytes(&self, shard: usize, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.read(shard, offset, len)
    }

    fn reader(&self) -> Option<Rc<dyn ChunkReader>> {
        Some(Rc::new(self.clone()))
    }
}

/// A package on disk.
#[derive(Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Byte offset of each shard in the concatenated stream.
    starts: Vec<u64>,
}

impl Package {
    /// Reads and checks model.json (not the shard contents: see [`Package::verify`]).
    pub fn open(dir: &Path) -> Result<Package> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest = parse_manifest(&text).map_err(|e| match e {
            Error::Format { message, .. } => Error::format(path.display(), message),
            other => other,
        })?;
        let mut starts = Vec::with_capacity(manifest.shards.len());
        let mut total = 0u64;
        for shard in &manifest.shards {
            starts.push(total);
            total += shard.bytes;
        }
        Ok(Package { dir: dir.to_path_buf(), manifest, starts })
    }

    /// Reads `len` bytes starting at (shard, offset), continuing into later shards.
    pub fn read(&self, shard: usize, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len as usize];
        let (mut shard, mut offset, mut filled) = (shard, offset, 0usize);
        while filled < out.len() {
            let info = self.manifest.shards.get(shard).ok_or_else(|| {
                Error::format(
                    self.dir.join(MANIFEST).display(),
                    format!("a tensor runs past the last shard ({})", self.manifest.shards.len()),
                )
            })?;
            let path = self.dir.join(&info.file);
            let n = ((info.bytes.saturating_sub(offset)) as usize).min(out.len() - filled);
            let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&path, e))?;
            file.read_exact(&mut out[filled..filled + n]).map_err(|e| {
                Error::format(path.display(), format!("truncated: {e} (the manifest says {} bytes)", info.bytes))
            })?;
            filled += n;
            shard += 1;
            offset = 0;
        }
        Ok(out)
    }

    /// One chunk of a tensor in GPU layout (synchronous: files are local).
    pub fn read_chunk(&self, chunk: &Chunk) -> Result<GpuLayout> {
        block_on_ready(self.chunk_layout(chunk))
    }

    /// A whole tensor dequantized to f32.
    pub fn read_f32(&self, entry: &TensorEntry) -> Result<Vec<f32>> {
        block_on_ready(self.tensor_f32(entry))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        ShardSource::tensor(self, name)
    }

    /// Checks every shard's size and sha256 against the manifest. Returns the
    /// bytes checked; the first mismatch is an error naming the shard.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<u64> {
        let mut checked = 0;
        for shard in &self.manifest.shards {
            let path = self.dir.join(&shard.file);
            let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            if len != shard.bytes {
                return Err(Error::format(
                    path.display(),
                    format!("{len} bytes, the manifest says {} (truncated or replaced)", shard.bytes),
                ));
            }
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(|e| Error::io(&path, e))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                checked += n as u64;
                progress(checked);
            }
            let got = hex(&hash.finalize());
            if got != shard.sha256 {
                return Err(Error::format(
                    path.display(),
                    format!("sha256 {got} does not match the manifest's {} (corrupted)", shard.sha256),
                ));
            }
        }
        Ok(checked)
    }

    pub fn total_bytes(&self) -> u64 {
        self.manifest.shards.iter().map(|s| s.bytes).sum()
    }

    /// Offset of (shard, offset) in the concatenated stream.
    pub fn global_offset(&self, shard: usize, offset: u64) -> Option<u64> {
        self.starts.get(shard).map(|s| s + offset)
    }
}

/// Polls a future that never waits (Package's reads are synchronous).
fn block_on_ready<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => Err(Error::Config { message: "a package file read did not complete".into() }),
    }
}

/// Parses model.json and checks that it is self-consistent: known format,
/// every chunk's size matches its tensor's format and shape, every chunk lies
/// inside the shards, no two tensors share a name.
pub fn parse_manifest(text: &str) -> Result<Manifest> {
    let bad = |m: String| Error::format(MANIFEST, m);
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("malformed: {e}")))?;
    if !json.is_object() {
        return Err(bad("malformed: not a JSON object".into()));
    }
    // The format first: an older package's config fails to parse otherwise.
    let format = json.get("format").and_then(|f| f.as_str()).unwrap_or("(none)");
    if format != FORMAT {
        return Err(bad(format!(
            "format `{format}` is not {FORMAT}: this package was made by another phi-web version; \
             convert the model again (`phi-web convert SOURCE OUT_DIR`)"
        )));
    }
    let manifest: Manifest = serde_json::from_value(json).map_err(|e| bad(format!("malformed: {e}")))?;
    let total: u64 = manifest
        .shards
        .iter()
        .try_fold(0u64, |a, s| a.checked_add(s.bytes))
        .ok_or_else(|| bad("shard sizes overflow".into()))?;
    let mut starts = Vec::new();
    let mut acc = 0u64;
    for shard in &manifest.shards {
        if shard.file.contains('/') || shard.file.contains('\\') || shard.file.starts_with('.') {
            return Err(bad(format!("shard file name `{}` must be a plain name", shard.file)));
        }
        starts.push(acc);
        acc += shard.bytes;
    }
    let mut names = BTreeSet::new();
    for t in &manifest.tensors {
        if !names.insert(&t.name) {
            return Err(bad(format!("tensor {} appears twice", t.name)));
        }
        let format = t.weight_format()?;
        let (rows, cols) = t.rows_cols();
        if rows == 0 || cols == 0 || rows.checked_mul(cols).is_none() {
            return Err(bad(format!("tensor {}: shape {:?} must be [n] or [rows, cols], non-empty", t.name, t.shape)));
        }
        let chunk_rows: usize = t.chunks.iter().map(|c| c.rows).sum();
        if chunk_rows != rows {
            return Err(bad(format!("tensor {}: chunks hold {chunk_rows} rows, the shape says {rows}", t.name)));
        }
        for c in &t.chunks {
            let (payload, scales) = if format == WeightFormat::F32 && t.shape.len() == 1 {
                ((cols * 4) as u64, 0)
            } else {
                let (p, s) = quant::gpu_size(format, c.rows, cols);
                (p as u64, s as u64)
            };
            if c.payload_bytes != payload || c.scales_bytes != scales {
                return Err(bad(format!(
                    "tensor {}: a chunk of {} rows has {} + {} bytes, {} needs {payload} + {scales}",
                    t.name, c.rows, c.payload_bytes, c.scales_bytes, t.format
                )));
            }
            let start = starts.get(c.shard).map(|s| s + c.offset);
            match start.and_then(|s| s.checked_add(payload + scales)) {
                Some(end) if end <= total && c.offset < manifest.shards[c.shard].bytes.max(1) => {}
                _ => {
                    return Err(bad(format!(
                        "tensor {}: chunk at shard {} offset {} lies outside the {total} bytes of shards",
                        t.name, c.shard, c.offset
                    )))
                }
            }
        }
    }
    Ok(manifest)
}
