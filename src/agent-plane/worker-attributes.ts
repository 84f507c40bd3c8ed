// Bounds on what an agent may declare about itself, checked on Register and
// on every Hello.

import { MAX_WORKER_CAPACITY } from "../stores/lease-store.ts";

export const MAX_LABELS = 64;
export const MAX_LABEL_LENGTH = 128;
const LABEL = /^[A-Za-z0-9][A-Za-z0-9_.:/=-]*$/;

/** The cleaned attributes, or a message saying what is wrong. */
export function validateWorkerAttributes(input: { labels: string[]; capacity: number }): { labels: string[]; capacity: number } | string {
  if (input.labels.length > MAX_LABELS) return `at most ${MAX_LABELS} labels`;
  const labels = [...new Set(input.labels.map((label) => label.trim()).filter((label) => label !== ""))];
  for (const label of labels) {
    if (label.length > MAX_LABEL_LENGTH || !LABEL.test(label)) {
      return `label "${label.slice(0, MAX_LABEL_LENGTH)}" must be at most ${MAX_LABEL_LENGTH} characters of letters, digits and _.:/=-`;
    }
  }
  const capacity = input.capacity === 0 ? 1 : input.capacity;
  if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_WORKER_CAPACITY) return `capacity must be between 1 and ${MAX_WORKER_CAPACITY}`;
  return { labels: labels.sort(), capacity };
}
