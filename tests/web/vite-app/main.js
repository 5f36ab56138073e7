// A minimal app that depends on the packed npm package, as a user's would.
import { createEngine, listCachedModels } from "phi-web";

window.phiWeb = { createEngine, listCachedModels };
window.ready = true;
document.getElementById("status").textContent = "ready";
