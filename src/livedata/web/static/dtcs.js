// The Live Data page's strip of active diagnostic trouble codes (J1939 DM1) of a machine.
//
// Reads GET …/machines/{chassisId}/dtcs when a machine is chosen and every 5 s after
// (one small request; the list changes rarely), and shows one line per active DTC:
// SPN and its name, FMI in words, occurrences, since when, which ECU. Hidden while the
// machine has none; the page asks only for machines whose DBC is J1939.

import { api } from './api.js';
import { $, h } from './dom.js';

const REFRESH_MS = 5000;
const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});
const hex = (n) => `0x${n.toString(16).toUpperCase().padStart(2, '0')}`;

let timer = null;
let shown = null; // [orgId, chassisId] being shown

function render(active) {
  const panel = $('#dtc-panel');
  panel.hidden = active.length === 0;
  if (!active.length) {
    panel.replaceChildren();
    return;
  }
  const title = active.length === 1 ? '1 active DTC' : `${active.length} active DTCs`;
  panel.replaceChildren(
    h('h2', {}, `⚠ ${title}`),
    h('ul', {}, active.map((d) => h('li', { class: 'dtc', dataset: { spn: String(d.spn), fmi: String(d.fmi) } },
      h('b', {}, `SPN ${d.spn}`),
      d.name ? ` ${d.name}` : '',
      ` · FMI ${d.fmi}${d.fmiText ? ` ${d.fmiText}` : ''}`,
      ` · ${d.oc}×`,
      ` · since ${timeFormat.format(d.since)}`,
      ` · ECU ${hex(d.sa)}`))),
  );
}

async function refresh(orgId, chassisId) {
  try {
    const { active } = await api.dtcs(orgId, chassisId);
    if (shown?.[0] === orgId && shown?.[1] === chassisId) render(active);
  } catch {
    // a failed refresh keeps the last list; the next one tries again
  }
}

/** Show the DTCs of `chassisId` (null: none) and keep them current. */
export function showDtcs(orgId, chassisId) {
  clearInterval(timer);
  timer = null;
  shown = chassisId ? [orgId, chassisId] : null;
  render([]);
  if (!chassisId) return;
  refresh(orgId, chassisId);
  timer = setInterval(() => refresh(orgId, chassisId), REFRESH_MS);
}
