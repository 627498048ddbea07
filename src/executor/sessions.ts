import ort from 'onnxruntime-node';
import type { AdapterTensors } from '../protocol.js';
import { needsFullGraph, type FeedContext } from './model-constants.js';

/** A model's graphs as a worker opens them: the full graph, and the base graph where the model has one. */
export interface ModelSessions {
  session: ort.InferenceSession;
  base: ort.InferenceSession | null;
}

export async function openSessions(paths: { graphPath: string; baseGraphPath: string | null }, options: ort.InferenceSession.SessionOptions = {}): Promise<ModelSessions> {
  const session = await ort.InferenceSession.create(paths.graphPath, options);
  try {
    return { session, base: paths.baseGraphPath ? await ort.InferenceSession.create(paths.baseGraphPath, options) : null };
  } catch (e) {
    await session.release();
    throw e;
  }
}

/**
 * The session and feeds of a forward pass over rows with `adapters`: the base graph when it is
 * open and no row carries BitFit, LoRA or IA3; else the full graph, with the rows' bias and adapter
 * feeds (`rowFeeds`, for a caller that keeps them between steps).
 */
export function pickGraph(s: ModelSessions, ctx: FeedContext, feeds: Record<string, ort.Tensor>, adapters: (AdapterTensors | null)[], rowFeeds = () => ctx.rowFeeds(adapters)): { session: ort.InferenceSession; feeds: Record<string, ort.Tensor>; graph: 'base' | 'full' } {
  if (s.base && !needsFullGraph(adapters)) return { session: s.base, feeds, graph: 'base' };
  return { session: s.session, feeds: { ...feeds, ...rowFeeds() }, graph: 'full' };
}
