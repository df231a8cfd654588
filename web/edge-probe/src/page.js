// The edge probe page: runs a tiny TF.js model (half_plus_two, y = 0.5 * x + 2) in the browser
// and reports each inference's duration to tfwarden's OTLP/HTTP receiver with the OpenTelemetry
// JS SDK, as a TF.js app would. Everything comes from the query string:
//   ?url=http://127.0.0.1:9321/v1/metrics  the receiver (another origin: CORS)
//   &token=SECRET                          bearer token (Authorization header: a preflight)
//   &n=20                                  inferences to run (default 10)
//   &backend=cpu                           TF.js backend: cpu (default) or wasm (its .wasm files
//                                          are served next to the page; headless Chromium has no GPU)
//   &device=ID  &model=half_plus_two  &version=1  &timeout=5000 (export timeout, ms)
// When the export has resolved, #done appears and #summary holds the JSON summary.
import * as tf from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { MeterProvider, PeriodicExportingMetricReader, AggregationType } from '@opentelemetry/sdk-metrics';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { ExportResultCode } from '@opentelemetry/core';

const BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200];

/** half_plus_two: one dense unit with fixed weights (no model download). */
function halfPlusTwo() {
  const model = tf.sequential();
  model.add(tf.layers.dense({ units: 1, inputShape: [1], useBias: true }));
  model.layers[0].setWeights([tf.tensor2d([[0.5]]), tf.tensor1d([2])]);
  return model;
}

/** The OTLP exporter, keeping the result of each export for the page's summary. */
class RecordingExporter {
  constructor(inner) {
    this.inner = inner;
    this.results = [];
  }

  export(metrics, resultCallback) {
    this.inner.export(metrics, (result) => {
      this.results.push(result);
      resultCallback(result);
    });
  }

  forceFlush() { return this.inner.forceFlush(); }
  shutdown() { return this.inner.shutdown(); }
  selectAggregation(type) { return this.inner.selectAggregation(type); }
  selectAggregationTemporality(type) { return this.inner.selectAggregationTemporality(type); }
}

function show(id, text) {
  document.getElementById(id).textContent = text;
}

function deviceModel() {
  const agent = navigator.userAgent;
  return /HeadlessChrome/.test(agent) ? 'headless-chromium' : (agent.match(/Chrome\/\d+/) || ['browser'])[0];
}

async function main() {
  const query = new URLSearchParams(window.location.search);
  const n = Number.parseInt(query.get('n') || '10', 10);
  const url = query.get('url');
  const token = query.get('token');
  const model = query.get('model') || 'half_plus_two';
  const version = query.get('version') || '1';
  const deviceId = query.get('device') || crypto.randomUUID();
  const timeoutMillis = Number.parseInt(query.get('timeout') || '5000', 10);
  if (!url) throw new Error('no ?url= for the OTLP receiver');

  setWasmPaths(new URL('./', window.location.href).href);  // dist/*.wasm: no CDN
  if (!(await tf.setBackend(query.get('backend') || 'cpu'))) {
    throw new Error(`TF.js backend ${query.get('backend')} did not initialize`);
  }
  await tf.ready();
  const backend = tf.getBackend();
  const wasm = backend !== 'wasm' ? null : {
    simd: await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
    threads: await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT') };
  show('backend', `${backend} (TF.js ${tf.version.tfjs})${wasm ? ` ${JSON.stringify(wasm)}` : ''}`);

  const resource = resourceFromAttributes({
    'ml.model.name': model, 'ml.model.version': version,
    'ml.runtime.name': 'tfjs', 'ml.runtime.version': tf.version.tfjs,
    'ml.delegate': backend, 'device.id': deviceId, 'device.model.identifier': deviceModel(),
  });
  const exporter = new RecordingExporter(new OTLPMetricExporter({
    url, timeoutMillis, headers: token ? { Authorization: `Bearer ${token}` } : {},
  }));
  const meters = new MeterProvider({
    resource,
    readers: [new PeriodicExportingMetricReader({
      exporter, exportIntervalMillis: 600000, exportTimeoutMillis: timeoutMillis + 1000 })],
    views: [{ instrumentName: 'ml.inference.duration', aggregation: {
      type: AggregationType.EXPLICIT_BUCKET_HISTOGRAM, options: { boundaries: BOUNDARIES } } }],
  });
  const inference = meters.getMeter('edge-probe').createHistogram(
    'ml.inference.duration', { unit: 'ms', advice: { explicitBucketBoundaries: BOUNDARIES } });

  const net = halfPlusTwo();
  const inputs = [];
  const outputs = [];
  for (let i = 0; i < n; i += 1) {
    const x = i - 1;  // -1, 0, 1, ...: y = 1.5, 2, 2.5, ...
    const start = performance.now();
    const y = tf.tidy(() => net.predict(tf.tensor2d([[x]])).dataSync()[0]);
    inference.record(performance.now() - start);
    inputs.push(x);
    outputs.push(y);
  }
  const correct = outputs.every((y, i) => Math.abs(y - (0.5 * inputs[i] + 2)) < 1e-6);
  show('outputs', outputs.join(', '));
  show('check', correct ? 'all outputs == 0.5 * x + 2' : 'WRONG outputs');

  await meters.forceFlush();
  const result = exporter.results.at(-1);
  const exported = result === undefined ? 'no export'
    : result.code === ExportResultCode.SUCCESS ? 'success' : `failed: ${result.error}`;
  await meters.shutdown().catch(() => {});
  return { backend, wasm, tfjs: tf.version.tfjs, inferences: n, inputs, outputs, correct, exported,
           model, version, deviceModel: deviceModel() };
}

function finish(summary) {
  window.edgeProbe = summary;
  show('export', summary.exported || summary.error);
  show('summary', `{\n${Object.entries(summary).map(([k, v]) => ` "${k}": ${JSON.stringify(v)}`).join(',\n')}\n}`);
  const done = document.getElementById('done');
  done.textContent = summary.error ? 'done (error)' : 'done';
  done.hidden = false;
}

main().then(finish, (error) => finish({ error: String(error && error.stack || error) }));
