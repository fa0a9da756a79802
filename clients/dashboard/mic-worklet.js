/* AudioWorklet for the dashboard's "listen to this browser's microphone":
 * mixes the input to mono, converts it to 16-bit PCM (round(x * 32768),
 * clipped, as the daemon's codec does) and posts blocks of `blockSamples`
 * samples (about 100 ms) to the page, which sends them to /ingest as binary
 * frames. Int16Array is little-endian on every platform browsers run on. */
"use strict";

class PcmSender extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.block = Math.max(128, opts.blockSamples | 0 || 4800);
    this.buf = new Int16Array(this.block);
    this.n = 0;
    this.port.onmessage = (e) => { if (e.data === "stop") this.stopped = true; };
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const frames = input[0].length;
    for (let i = 0; i < frames; i++) {
      let s = 0;
      for (let c = 0; c < channels; c++) s += input[c][i];
      s /= channels;
      this.buf[this.n++] = Math.max(-32768, Math.min(32767, Math.round(s * 32768)));
      if (this.n === this.block) {
        this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
        this.buf = new Int16Array(this.block);
        this.n = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-sender", PcmSender);
