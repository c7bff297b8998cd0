// Node shapes for sigma: one small WebGL program per shape, all sharing sigma's NodeProgram
// plumbing (buffers, picking, camera) and differing only in a signed-distance function in the
// fragment shader. Sigma ships circles only; this is the extension point it documents for more.
import { NodeProgram, floatColor } from "../vendor/graph-libs.js";

// Distance from p (in units of the node radius) to the shape's edge: negative inside.
const SDF = {
  circle: "return length(p) - 1.0;",
  square: `
    vec2 d = abs(p) - vec2(0.8);
    return length(max(d, 0.0)) + min(max(d.x, d.y), 0.0) - 0.08;`,
  hexagon: `
    const vec3 k = vec3(-0.866025404, 0.5, 0.577350269);
    p = abs(p.yx);
    p -= 2.0 * min(dot(k.xy, p), 0.0) * k.xy;
    p -= vec2(clamp(p.x, -k.z * 0.95, k.z * 0.95), 0.95);
    return length(p) * sign(p.y);`,
  octagon: `
    const vec3 k = vec3(-0.9238795325, 0.3826834323, 0.4142135623);
    p = abs(p);
    p -= 2.0 * min(dot(vec2(k.x, k.y), p), 0.0) * vec2(k.x, k.y);
    p -= 2.0 * min(dot(vec2(-k.x, k.y), p), 0.0) * vec2(-k.x, k.y);
    p -= vec2(clamp(p.x, -k.z * 0.95, k.z * 0.95), 0.95);
    return length(p) * sign(p.y);`,
  diamond: "p = abs(p); return (p.x + p.y - 1.2) * 0.7071;",
  // Pseudo nodes (the internet, unknown peers) are hollow rings: present but clearly not "real".
  ring: "return abs(length(p) - 0.82) - 0.18;",
};

const VERTEX = /* glsl */ `
attribute vec4 a_id;
attribute vec4 a_color;
attribute vec2 a_position;
attribute float a_size;
attribute float a_angle;

uniform mat3 u_matrix;
uniform float u_sizeRatio;
uniform float u_correctionRatio;

varying vec4 v_color;
varying vec2 v_diffVector;
varying float v_radius;

const float bias = 255.0 / 254.0;
// The triangle that carries the fragments is 1.6x sigma's circle triangle, so shapes whose
// corners reach beyond the node radius (squares, hexagons) are not clipped.
const float spread = 1.6;

void main() {
  float size = a_size * u_correctionRatio / u_sizeRatio * 4.0;
  vec2 diffVector = spread * size * vec2(cos(a_angle), sin(a_angle));
  gl_Position = vec4((u_matrix * vec3(a_position + diffVector, 1)).xy, 0, 1);
  v_diffVector = diffVector;
  v_radius = size / 2.0;
  #ifdef PICKING_MODE
  v_color = a_id;
  #else
  v_color = a_color;
  #endif
  v_color.a *= bias;
}
`;

function fragment(sdf) {
  return /* glsl */ `
precision highp float;
varying vec4 v_color;
varying vec2 v_diffVector;
varying float v_radius;
uniform float u_correctionRatio;

float shape(vec2 p) { ${sdf} }

void main(void) {
  float d = shape(v_diffVector / v_radius) * v_radius;
  #ifdef PICKING_MODE
  if (d > 0.0) discard;
  gl_FragColor = v_color;
  #else
  float aa = u_correctionRatio * 1.5;
  float alpha = 1.0 - smoothstep(-aa, 0.0, d);
  if (alpha <= 0.0) discard;
  // A slightly darker rim gives crisp edges against the background and between overlapping nodes.
  float rim = smoothstep(-aa * 2.5, -aa * 1.2, d);
  vec3 rgb = mix(v_color.rgb, v_color.rgb * 0.55, rim);
  gl_FragColor = vec4(rgb, v_color.a) * alpha;
  #endif
}
`;
}

const { UNSIGNED_BYTE, FLOAT } = WebGLRenderingContext;
const ANGLES = [[0], [(2 * Math.PI) / 3], [(4 * Math.PI) / 3]];

function createShapeProgram(sdf) {
  const FRAGMENT = fragment(sdf);
  return class NodeShapeProgram extends NodeProgram {
    getDefinition() {
      return {
        VERTICES: 3,
        VERTEX_SHADER_SOURCE: VERTEX,
        FRAGMENT_SHADER_SOURCE: FRAGMENT,
        METHOD: WebGLRenderingContext.TRIANGLES,
        UNIFORMS: ["u_sizeRatio", "u_correctionRatio", "u_matrix"],
        ATTRIBUTES: [
          { name: "a_position", size: 2, type: FLOAT },
          { name: "a_size", size: 1, type: FLOAT },
          { name: "a_color", size: 4, type: UNSIGNED_BYTE, normalized: true },
          { name: "a_id", size: 4, type: UNSIGNED_BYTE, normalized: true },
        ],
        CONSTANT_ATTRIBUTES: [{ name: "a_angle", size: 1, type: FLOAT }],
        CONSTANT_DATA: ANGLES,
      };
    }

    processVisibleItem(nodeIndex, startIndex, data) {
      const array = this.array;
      array[startIndex++] = data.x;
      array[startIndex++] = data.y;
      array[startIndex++] = data.size;
      array[startIndex++] = floatColor(data.color);
      array[startIndex++] = nodeIndex;
    }

    setUniforms(params, { gl, uniformLocations }) {
      gl.uniform1f(uniformLocations.u_correctionRatio, params.correctionRatio);
      gl.uniform1f(uniformLocations.u_sizeRatio, params.sizeRatio);
      gl.uniformMatrix3fv(uniformLocations.u_matrix, false, params.matrix);
    }
  };
}

// sigma `nodeProgramClasses`: the node attribute `type` picks one of these.
export const SHAPE_PROGRAMS = Object.fromEntries(
  Object.entries(SDF).map(([name, sdf]) => [name, createShapeProgram(sdf)]),
);

// `shape` from the API -> program name; unknown shapes fall back to the kind's default.
const SHAPE_ALIASES = {
  circle: "circle",
  square: "square",
  hexagon: "hexagon",
  heptagon: "octagon",
  octagon: "octagon",
  diamond: "diamond",
  cloud: "ring",
  ring: "ring",
};

export const KIND_STYLE = {
  host: { color: "#4ea1f3", shape: "circle", size: 11, label: "Host" },
  container: { color: "#35c0a1", shape: "hexagon", size: 9, label: "Container" },
  image: { color: "#a98bf5", shape: "octagon", size: 10, label: "Image" },
  process: { color: "#f0b455", shape: "square", size: 6.5, label: "Process" },
  pseudo: { color: "#8b97a8", shape: "ring", size: 7, label: "Pseudo (outside)" },
};
const UNKNOWN_KIND = { color: "#c6ced8", shape: "circle", size: 7, label: "Other" };

export function styleFor(node) {
  const kind = node.pseudo ? "pseudo" : node.kind;
  const style = KIND_STYLE[kind] || UNKNOWN_KIND;
  const shape = node.pseudo ? "ring" : SHAPE_ALIASES[node.shape] || style.shape;
  return { color: style.color, size: style.size, type: shape };
}
