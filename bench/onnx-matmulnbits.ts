// Builds an ONNX model holding one com.microsoft MatMulNBits node (Y = A x B^T with int4 B) from our
// Q4_0 weights, so onnxruntime can run the very same int4 matrix our native kernel runs.
//
// MatMulNBits (onnxruntime docs/ContribOperators.md): B is uint8 [N, K/block_size, block_size/2], element
// 2j of a block in the low nibble of byte j and element 2j+1 in the high nibble; scales are float
// [N * K/block_size]; value = (q - zero_point) * scale, zero_point 8 when the zero_points input is absent.
// Q4_0 (ggml): per 32 values, f16 d then 16 bytes, byte j holding element j (low) and j+16 (high);
// value = (q - 8) * d. So only the nibble order differs, and scale = d widened to f32.
import { GGMLType, GGML_TYPE_INFO } from '../src/model/ggml-types.js';
import { f16ToF32 } from '../src/model/quant/index.js';
import { ProtoWriter } from './protobuf.js';

const Q4_0_BLOCK = GGML_TYPE_INFO[GGMLType.Q4_0]!.blockSize; // 32 values
const Q4_0_BYTES = GGML_TYPE_INFO[GGMLType.Q4_0]!.typeSize; // 2 (f16 d) + 16 (nibbles)
const NIBBLE_BYTES = Q4_0_BLOCK / 2;

export interface MatMulNBitsWeights {
  /** Outputs (rows of our matrix). */
  n: number;
  /** Inputs (columns of our matrix). */
  k: number;
  /** uint8 [n, k/32, 16]. */
  b: Uint8Array;
  /** float [n * k/32]. */
  scales: Float32Array;
}

/** Re-lays an n x k Q4_0 matrix (rows contiguous, as in GGUF) into MatMulNBits' B and scales. */
export function q4_0ToMatMulNBits(q4: Uint8Array, n: number, k: number): MatMulNBitsWeights {
  if (k % Q4_0_BLOCK !== 0) throw new RangeError(`k=${k} is not a multiple of ${Q4_0_BLOCK}`);
  const blocks = (n * k) / Q4_0_BLOCK;
  if (q4.length !== blocks * Q4_0_BYTES) {
    throw new RangeError(`Q4_0 matrix ${n}x${k} needs ${blocks * Q4_0_BYTES} bytes, got ${q4.length}`);
  }
  const b = new Uint8Array(blocks * NIBBLE_BYTES);
  const scales = new Float32Array(blocks); // block order is row-major over (n, block of k) in both layouts
  const nibble = new Uint8Array(Q4_0_BLOCK);
  for (let blk = 0; blk < blocks; blk++) {
    const src = blk * Q4_0_BYTES;
    scales[blk] = f16ToF32(q4[src]! | (q4[src + 1]! << 8));
    for (let j = 0; j < NIBBLE_BYTES; j++) {
      const byte = q4[src + 2 + j]!;
      nibble[j] = byte & 0x0f;
      nibble[j + NIBBLE_BYTES] = byte >> 4;
    }
    const dst = blk * NIBBLE_BYTES;
    for (let j = 0; j < NIBBLE_BYTES; j++) b[dst + j] = nibble[2 * j]! | (nibble[2 * j + 1]! << 4);
  }
  return { n, k, b, scales };
}

// onnx.proto field numbers and enum values used below.
const ONNX = {
  model: { irVersion: 1, opsetImport: 8, producerName: 2, graph: 7 },
  opset: { domain: 1, version: 2 },
  graph: { node: 1, name: 2, initializer: 5, input: 11, output: 12 },
  node: { input: 1, output: 2, name: 3, opType: 4, attribute: 5, domain: 7 },
  attribute: { name: 1, i: 3, type: 20 },
  attributeTypeInt: 2,
  tensor: { dims: 1, dataType: 2, name: 8, rawData: 9 },
  dataType: { float: 1, uint8: 2 },
  valueInfo: { name: 1, type: 2 },
  typeProto: { tensorType: 1 },
  tensorType: { elemType: 1, shape: 2 },
  shape: { dim: 1 },
  dim: { dimValue: 1 },
} as const;

export interface MatMulNBitsModelOptions {
  /** 0: f32 compute; 4: A quantized to int8 per block (the fast CPU path). Default 4. */
  accuracyLevel?: number;
}

/** ModelProto bytes: input A float [1, K] -> MatMulNBits(bits 4, block_size 32) -> output Y float [1, N]. */
export function buildMatMulNBitsModel(w: MatMulNBitsWeights, options: MatMulNBitsModelOptions = {}): Uint8Array {
  const accuracyLevel = options.accuracyLevel ?? 4;
  const blocksPerRow = w.k / Q4_0_BLOCK;
  const scaleBytes = new Uint8Array(w.scales.buffer, w.scales.byteOffset, w.scales.byteLength);

  const intAttribute = (node: ProtoWriter, name: string, value: number): void => {
    node.message(ONNX.node.attribute, (a) => {
      a.string(ONNX.attribute.name, name).varint(ONNX.attribute.i, value)
        .varint(ONNX.attribute.type, ONNX.attributeTypeInt);
    });
  };
  const tensorValueInfo = (graph: ProtoWriter, field: number, name: string, dims: number[]): void => {
    graph.message(field, (vi) => {
      vi.string(ONNX.valueInfo.name, name);
      vi.message(ONNX.valueInfo.type, (t) => t.message(ONNX.typeProto.tensorType, (tt) => {
        tt.varint(ONNX.tensorType.elemType, ONNX.dataType.float);
        tt.message(ONNX.tensorType.shape, (s) => {
          for (const d of dims) s.message(ONNX.shape.dim, (dim) => dim.varint(ONNX.dim.dimValue, d));
        });
      }));
    });
  };
  const initializer = (graph: ProtoWriter, name: string, dataType: number, dims: number[], raw: Uint8Array): void => {
    graph.message(ONNX.graph.initializer, (t) => {
      for (const d of dims) t.varint(ONNX.tensor.dims, d);
      t.varint(ONNX.tensor.dataType, dataType).string(ONNX.tensor.name, name).bytes(ONNX.tensor.rawData, raw);
    });
  };

  return new ProtoWriter()
    .varint(ONNX.model.irVersion, 8)
    .message(ONNX.model.opsetImport, (o) => o.string(ONNX.opset.domain, '').varint(ONNX.opset.version, 17))
    .message(ONNX.model.opsetImport, (o) => o.string(ONNX.opset.domain, 'com.microsoft').varint(ONNX.opset.version, 1))
    .string(ONNX.model.producerName, 'moe-offload bench')
    .message(ONNX.model.graph, (g) => {
      g.message(ONNX.graph.node, (node) => {
        for (const input of ['A', 'B', 'scales']) node.string(ONNX.node.input, input);
        node.string(ONNX.node.output, 'Y').string(ONNX.node.name, 'matmul')
          .string(ONNX.node.opType, 'MatMulNBits').string(ONNX.node.domain, 'com.microsoft');
        intAttribute(node, 'K', w.k);
        intAttribute(node, 'N', w.n);
        intAttribute(node, 'bits', 4);
        intAttribute(node, 'block_size', Q4_0_BLOCK);
        intAttribute(node, 'accuracy_level', accuracyLevel);
      });
      g.string(ONNX.graph.name, 'matmulnbits');
      initializer(g, 'B', ONNX.dataType.uint8, [w.n, blocksPerRow, NIBBLE_BYTES], w.b);
      initializer(g, 'scales', ONNX.dataType.float, [w.n * blocksPerRow], scaleBytes);
      tensorValueInfo(g, ONNX.graph.input, 'A', [1, w.k]);
      tensorValueInfo(g, ONNX.graph.output, 'Y', [1, w.n]);
    })
    .finish();
}
