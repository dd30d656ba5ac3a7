// Draws chart specs (charts.ts) in Node, with no browser: SVG with vega's
// headless renderer, PNG from that SVG with resvg. Both load from node_modules
// when first used (esbuild externals; see esbuild.mjs).
import type { Spec } from './charts.js';

/** SVG text of one Vega-Lite spec, rendered headless. */
export async function renderSvg(spec: Spec): Promise<string> {
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  const compiled = vegaLite.compile(spec as never).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** PNG bytes of an SVG, on a white background (the SVG's own is transparent). */
export async function svgToPng(svg: string, scale = 2): Promise<Buffer> {
  const { Resvg } = await import('@resvg/resvg-js');
  const r = new Resvg(svg, { background: 'white', fitTo: { mode: 'zoom', value: scale }, font: { loadSystemFonts: true } });
  return r.render().asPng();
}
