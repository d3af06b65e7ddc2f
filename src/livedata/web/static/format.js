// How a signal's value and unit are shown to people: value tables, units, resolution.
//
// The machines API gives each field its `unit` as the DBC writes it, its value table
// (`choices`, raw number -> text) and its `resolution` (one raw step). A value with a
// text in the table shows as `R (-1)`; other numbers get as many decimals as the
// resolution carries (0.1 -> 1, 0.05 -> 2, 0.0039 -> 3: no `21.5078 km/h`); DBC unit
// spellings become what people write (`degC` -> `°C`).

const UNIT_TEXT = {
  degC: '°C',
  'deg C': '°C',
  DegC: '°C',
  degF: '°F',
  deg: '°',
  'm/s2': 'm/s²',
  'm/s^2': 'm/s²',
  m2: 'm²',
  m3: 'm³',
  ohm: 'Ω',
  Ohm: 'Ω',
  us: 'µs',
  uA: 'µA',
  uV: 'µV',
  perc: '%',
};

/** The unit as people write it. */
export function unitText(unit) {
  return UNIT_TEXT[unit] ?? unit ?? '';
}

/** Decimals that show a value of this resolution without noise (undefined: unknown). */
export function decimalsFor(resolution) {
  if (typeof resolution !== 'number' || !(resolution > 0)) return undefined;
  return Math.min(6, Math.max(0, Math.ceil(-Math.log10(resolution) - 1e-9)));
}

/** What the charts need of one field of the machines API. */
export function fieldInfo(field) {
  return {
    unit: unitText(field.unit),
    choices: field.choices ?? null,
    decimals: decimalsFor(field.resolution),
  };
}

const formats = new Map();

function numberFormat(decimals) {
  let format = formats.get(decimals);
  if (!format) {
    format = decimals === undefined
      ? new Intl.NumberFormat(undefined, { maximumSignificantDigits: 6 })
      : new Intl.NumberFormat(undefined, { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
    formats.set(decimals, format);
  }
  return format;
}

/** A value for a legend or tooltip: `R (-1)`, `21.508`, or the text of a text value. */
export function formatValue(value, info) {
  if (typeof value !== 'number') return String(value);
  const label = info?.choices?.[String(value)];
  if (label != null) return `${label} (${numberFormat(0).format(value)})`;
  return numberFormat(info?.decimals).format(value);
}
