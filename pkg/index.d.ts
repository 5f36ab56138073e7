// Types of the phi-web npm package.

export interface LoadProgress {
  /**
   * "import" while a GGUF is read and converted into a package in the cache
   * (loadedBytes of totalBytes of the GGUF; first load only), "download"
   * while shards arrive (from the network or the cache), then "ready".
   */
  phase: "import" | "download" | "ready";
  loadedBytes: number;
  totalBytes: number;
  shardsDone: number;
  shardsTotal: number;
  /** Shards that came from the browser cache rather than the network. */
  fromCache: number;
  networkBytes: number;
}

export interface EngineOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Run the engine in a Web Worker (default) so the page never freezes. */
  worker?: boolean;
  /** Where shards are kept between visits: Cache Storage (default), the origin private file system, or nowhere. */
  cache?: "cache-api" | "opfs" | "none";
  /** Tokens of context to allocate (0: the model's maximum, capped at 4096). */
  contextLength?: number;
  /**
   * How the KV cache stores keys and values: "f16" (default); "q8", 8-bit
   * blocks of 32 with a scale, 0.56x the memory of f16 at a small cost in
   * accuracy (see the README's Performance section); or "f32", exact, 2x
   * the memory of f16.
   */
  kvCache?: "f16" | "q8" | "f32";
  /** Use neither shader-f16 nor subgroups. */
  portable?: boolean;
  /**
   * Bytes of weights the GPU may hold (0, the default: all of them). A
   * mixture of experts (PhiMoE) over the budget keeps attention, norms and
   * routers on the GPU, and a cache of each layer's experts: the others are
   * read from browser storage when a token routes to them. A budget below
   * the resident part plus two experts per layer is a MemoryBudgetError.
   */
  gpuMemoryBudget?: number;
  /**
   * Tokens per forward pass while reading a prompt (0, the default: 64).
   * Activation memory grows with it; 1 reads the prompt token by token.
   */
  prefillChunk?: number;
  /**
   * A GGUF's matrices stored as this format (default: the GGUF's own where
   * phi-web has kernels for it, Q4_K as q4_1 and Q6_K as q8_0). Ignored for
   * packages, which were quantized when converted.
   */
  quant?: "q4_0" | "q4_1" | "q8_0" | "f16" | "f32";
  /**
   * Where the model runs. "auto" (the default): WebGPU on a hardware
   * adapter; the CPU backend (wasm SIMD) when the browser has no WebGPU or
   * only a software rasterizer (SwiftShader, llvmpipe). "webgpu" fails with
   * NoWebGPUError without it. `stats().backend` and `backendReason` say
   * which runs and why. The CPU backend runs Phi-3, Phi-3.5-mini, Phi-4,
   * Phi-3-small, Phi-3.5-vision, Llama and BERT encoders; Phi-3.5-MoE needs WebGPU.
   */
  backend?: "auto" | "webgpu" | "cpu";
  /** The CPU backend's threads (0, the default: what the page allows; one without cross-origin isolation). */
  threads?: number;
}

/**
 * An image for a vision model (Phi-3.5-vision): a URL (data:, blob:,
 * http(s):), or phi-web's addition, the image itself. Decoded in the browser;
 * it never leaves the machine.
 */
export type ImageSource = string | Blob | ImageBitmap | ImageData;

/** OpenAI's content parts: text, and images for a vision model. */
export type ContentPart =
  | { type: "text"; text: string }
  | { type: "image_url"; image_url: { url: ImageSource } | ImageSource };

export type ChatMessage =
  | { role: "system"; content: string }
  /** A user turn: text, or parts with images (a vision model only; several per message allowed). */
  | { role: "user"; content: string | ContentPart[] }
  /** An assistant turn; one that called tools has `tool_calls` (and content null). */
  | { role: "assistant"; content: string | null; tool_calls?: ToolCall[] }
  /** A tool's result, for the call with id `tool_call_id`. */
  | { role: "tool"; tool_call_id: string; content: string };

/** A JSON Schema (draft 2020-12 keywords; what llguidance enforces). */
export type JSONSchema = Record<string, unknown>;

/**
 * The answer's shape, enforced token by token (constrained decoding):
 * "json_object" any JSON object; "json_schema" JSON valid against `schema`
 * (`strict: true`: a keyword that cannot be enforced is an InputError;
 * otherwise it is ignored); "grammar" a Lark grammar in llguidance's syntax
 * (`start: "yes" | "no"`, regexes as `/[0-9]+/`, `%json { schema }`).
 * JSON comes compact, without free whitespace.
 */
export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | { type: "json_schema"; json_schema: { name?: string; description?: string; schema: JSONSchema; strict?: boolean } }
  | { type: "grammar"; grammar: string };

export interface Tool {
  type: "function";
  function: {
    /** 1 to 64 of a-z, A-Z, 0-9, _ and -. */
    name: string;
    description?: string;
    /** A JSON Schema of the arguments object (default: no arguments). */
    parameters?: JSONSchema;
  };
}

/**
 * "auto" (default): the model answers in text or calls one tool; "required":
 * it calls one of the tools; a named function: it calls that one; "none": the
 * tools are left out of the prompt and the answer is text.
 */
export type ToolChoice = "auto" | "none" | "required" | { type: "function"; function: { name: string } };

export interface ToolCall {
  /** "call_" and 24 hex digits. */
  id: string;
  type: "function";
  /** `arguments`: a JSON text valid against the tool's parameters. */
  function: { name: string; arguments: string };
}

/** A streamed piece of a tool call: the first has id, type and name; the rest add to `arguments`. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: "function";
  function: { name?: string; arguments: string };
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  max_tokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  top_p?: number;
  top_k?: number;
  repetition_penalty?: number;
  seed?: number;
  stop?: string | string[];
  /** Constrain the answer to JSON or a grammar (not together with tools). */
  response_format?: ResponseFormat;
  /** Functions the model may call (one call per answer). */
  tools?: Tool[];
  tool_choice?: ToolChoice;
  stream?: boolean;
  signal?: AbortSignal;
}

/**
 * "stop": a stop token or string, or a grammar that admits nothing more;
 * "length": max_tokens or the context (a constrained answer may then be
 * unfinished); "abort": interrupt(); "tool_calls": the answer is a tool call.
 */
export type FinishReason = "stop" | "length" | "abort" | "tool_calls";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: {
    index: number;
    /** content is null when the answer is a tool call. */
    message: { role: "assistant"; content: string | null; tool_calls?: ToolCall[] };
    finish_reason: FinishReason;
  }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: {
    index: number;
    delta: { role?: "assistant"; content?: string | null; tool_calls?: ToolCallDelta[] };
    finish_reason: FinishReason | null;
  }[];
  /** On the last chunk. */
  usage?: Usage;
}

export interface EngineStats {
  prompt_tokens?: number;
  /** Prompt tokens whose KV cache was reused from the previous request. */
  cached_tokens?: number;
  prefill_tokens_per_s?: number;
  decode_tokens_per_s?: number;
  ttft_ms?: number;
  /** Grammar masks computed in the last request (a constrained answer), and their mean cost in ms. */
  masks?: number;
  mask_ms?: number;
  /** The expert cache's work in the last request (models whose experts do not all fit the budget). */
  experts?: ExpertCacheStats;
  /** Which backend runs the model, and why it was chosen. */
  backend: "webgpu" | "cpu";
  backendReason: string;
  /** The CPU backend's threads and instruction set (absent on WebGPU). */
  threads?: number;
  /** Why the CPU backend has that many threads ("asked for", one per core, or why only one). */
  threadsReason?: string;
  simd?: string;
  /** Whether the page is cross-origin isolated (what CPU threads need). */
  crossOriginIsolated: boolean;
  /** GPU memory in storage buffers: weights, scratch, KV cache (absent on the CPU backend). */
  gpuBytes?: number;
  /** The CPU backend's weights and KV cache in wasm memory (absent on WebGPU). */
  memoryBytes?: number;
  /** Weight bytes read per generated token. */
  weightBytes: number;
  adapter: string;
  shaderF16: boolean;
  contextLength: number;
  /** A vision model's image tower: at most numCrops crops per image (besides its global view). */
  vision: { numCrops: number; weightBytes: number } | null;
  kvCache: "f16" | "q8" | "f32";
  /** Compute pipelines compiled for this model (at load, nothing else compiles). */
  pipelines: number;
  loadMs: number;
  networkBytes: number;
  shardsFromCache: number;
  /** What importing a GGUF decided that you may want to know (empty for packages and cached imports). */
  importWarnings: string[];
  /** The expert cache since loading (null when every expert is resident). */
  expertCache: Omit<ExpertCacheStats, "hit_rate" | "uploaded_bytes_per_token"> | null;
  /** Ranges read back from browser storage after loading (an expert cache's misses). */
  storageRangeReads: number;
  wasmMemoryBytes: number;
}

export interface ExpertCacheStats {
  experts_per_layer: number;
  /** Experts each layer keeps on the GPU. */
  resident_per_layer: number;
  /** One per layer, forward call and expert a token routes to. */
  lookups: number;
  hits: number;
  hit_rate: number;
  uploaded_bytes: number;
  uploaded_bytes_per_token: number;
}

export interface EmbeddingRequest {
  input: string | string[];
}

export interface EmbeddingResponse {
  object: "list";
  model: string;
  data: { object: "embedding"; index: number; embedding: number[] }[];
  usage: { prompt_tokens: number; total_tokens: number };
}

export interface Engine {
  /** For an embedding model's package (BERT family, e.g. all-MiniLM-L6-v2). */
  embeddings: {
    create(request: EmbeddingRequest): Promise<EmbeddingResponse>;
    /**
     * Splits a text into overlapping windows of at most `maxTokens` tokens
     * (default 128, overlap 32) for retrieval; offsets in UTF-16 code units.
     */
    chunk(text: string, options?: { maxTokens?: number; overlap?: number }): Promise<{ start: number; end: number; tokens: number }[]>;
  };
  chat: {
    completions: {
      create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
      create(request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
    };
  };
  /** Ends the running generation at its next token (finish_reason "abort"). */
  interrupt(): Promise<void>;
  /** Forgets the conversation's KV cache. */
  resetChat(): Promise<void>;
  /** Token ids of `text` as a prompt is encoded: special tokens in it recognised, no bos, no chat template. */
  tokenize(text: string): Promise<Uint32Array>;
  /** Logits of token ids as one sequence from position 0: ids.length rows of the vocabulary. Forgets the KV cache. */
  logits(
    tokenIds: number[] | Uint32Array,
    options?: {
      /** A vision model: each image's rows at positions at.. in place of those tokens. */
      images?: { at: number; image: ImageSource }[];
    },
  ): Promise<Float32Array>;
  stats(): Promise<EngineStats>;
  /** Frees GPU memory and ends the worker. */
  unload(): Promise<void>;
  /**
   * Creates the engine again with the same options (e.g. after a
   * DeviceLostError); shards come from the cache.
   */
  reload(): Promise<void>;
  /** Destroys the GPU device as a driver reset would, to test recovery. */
  loseDevice(): Promise<void>;
}

/**
 * Loads a phi-web model package (the URL of its model.json). Errors are
 * `Error`s with a `name`: NoWebGPUError, NetworkError, ShardError,
 * QuotaExceededError, ModelFormatError, DeviceLostError, GPUError, InputError, ImageError.
 */
/**
 * Loads a model: a package's model.json URL, a GGUF's URL (the server must
 * answer range requests; cross-origin, it must allow CORS), or a GGUF
 * File/Blob. A GGUF is converted into a package in the cache on its first
 * load, keyed by its URL, ETag and length; an interrupted import resumes.
 */
export function createEngine(source: string | Blob, options?: EngineOptions): Promise<Engine>;

export interface CachedModel {
  /** model.json's URL in the cache (for an imported GGUF or folder, its package's). */
  url: string;
  /** The URL the model came from (a GGUF's or folder's URL, or a File's name, for imports). */
  source: string;
  bytes: number;
  shardsCached: number;
  shardsTotal: number;
  complete: boolean;
}

export interface CacheOption {
  cache?: "cache-api" | "opfs";
  /** For a GGUF's or folder's URL: the `quant` it was loaded with. */
  quant?: string;
}

export function listCachedModels(options?: CacheOption): Promise<CachedModel[]>;
export function checkCachedModel(modelUrl: string, options?: CacheOption): Promise<CachedModel>;
export function deleteCachedModel(modelUrl: string, options?: CacheOption): Promise<boolean>;

/** A mixture of experts' weights by where they may live, from its parsed model.json. */
export interface ExpertSizes {
  /** Bytes that stay on the GPU whatever the budget (attention, norms, routers, embeddings, head). */
  resident: number;
  /** Bytes of one expert (its three projections). */
  expert: number;
  layers: number;
  experts: number;
  /** The gpuMemoryBudget that leaves `slots` experts of each layer on the GPU. */
  budgetFor(slots: number): number;
}
export function expertSizes(manifest: object): ExpertSizes;
