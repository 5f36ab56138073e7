// What the demo pages say about a phi-web error: a sentence a person can act
// on, then the error's own name and message.

const HINTS = {
  NoWebGPUError: "This browser has no WebGPU. Use a recent Chrome or Edge (or Safari/Firefox with WebGPU enabled).",
  DeviceLostError: "The GPU device was lost (a driver reset, or the GPU ran out of memory). Load the model again.",
  QuotaExceededError: "Not enough browser storage for this model. Delete cached models or free disk space.",
  ShardError: "A model file could not be downloaded intact.",
  NetworkError: "A download failed. Check the connection (or that the model was converted and is served).",
  ModelFormatError: "The model package is not usable by this version of phi-web.",
  InputError: "The request could not be run.",
  ImageError: "An image could not be read. Try a PNG, JPEG or WebP file.",
};

export function explain(error) {
  return `${HINTS[error?.name] ?? "Something went wrong."}\n${error?.name ?? "Error"}: ${error?.message ?? error}`;
}
