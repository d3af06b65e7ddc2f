// One ECharts line chart per group, over a rolling window that ends at "now".

import { cssVar } from './dom.js';
import { WINDOW_MS } from './feed.js';
import { formatValue, unitText } from './format.js';

const { echarts } = globalThis; // loaded by the classic <script> in index.html

const PALETTE = ['#2563eb', '#f59e0b', '#10b981', '#ef4444', '#8b5cf6', '#0891b2', '#db2777', '#65a30d'];
// Consecutive points further apart than this are not joined by a line: a gap in
// the data shows as a gap in the chart, not as a straight line across it. Wider,
// downsampled ranges pass a larger gap (a few bucket widths) to update().
const GAP_MS = 5000;

/** The chart colours of the current theme (app.css variables, switched by theme.js). */
function themeColors() {
  return {
    axis: cssVar('--chart-axis'),
    label: cssVar('--muted'),
    legend: cssVar('--text-2'),
    value: cssVar('--text-strong'),
    pointer: cssVar('--faint'),
    split: cssVar('--chart-split'),
    surface: cssVar('--surface'),
    border: cssVar('--border'),
    text: cssVar('--text'),
  };
}

/** The parts of a chart's option that depend on the theme. */
function themeOption(unit) {
  const c = themeColors();
  return {
    backgroundColor: 'transparent',
    graphic: [{
      id: 'unit', type: 'text', left: 8, top: 8,
      style: { text: unitText(unit), fill: c.label, font: '600 12px system-ui, sans-serif' },
    }],
    legend: {
      pageTextStyle: { color: c.label },
      textStyle: { color: c.legend, rich: { value: { color: c.value } } },
    },
    tooltip: {
      backgroundColor: c.surface, borderColor: c.border, textStyle: { color: c.text },
      axisPointer: { lineStyle: { color: c.pointer } },
    },
    xAxis: { axisLine: { lineStyle: { color: c.axis } }, axisLabel: { color: c.label } },
    yAxis: { axisLabel: { color: c.label }, splitLine: { lineStyle: { color: c.split } } },
  };
}

const numberFormat = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 6 }); // y-axis labels
const timeFormats = new Map(); // time zone ('local', 'UTC' or an IANA name) → tooltip time format

function timeFormat(zone) {
  let format = timeFormats.get(zone);
  if (!format) {
    const local = zone === 'local';
    format = new Intl.DateTimeFormat(undefined, {
      hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
      timeZone: local ? undefined : zone, timeZoneName: local ? undefined : 'short',
    });
    timeFormats.set(zone, format);
  }
  return format;
}

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export class GroupChart {
  /**
   * @param {HTMLElement} el
   * @param {{fields: string[], unit: string}} group
   * @param {Map<string, {unit: string, choices: object|null, decimals: number|undefined}>} infos
   *   each field's unit, value table and decimals (format.js fieldInfo)
   * @param {string} zone 'local' (the browser's time zone), 'UTC' or an IANA zone (the organisation's)
   */
  constructor(el, group, infos, zone = 'local') {
    this.fields = group.fields;
    this.infos = infos;
    this.zone = zone;
    this.chart = echarts.init(el, null, { renderer: 'canvas' });
    this.windowMs = WINDOW_MS;
    this.unit = group.unit;
    this.chart.setOption({ ...this.baseOption(group.unit), useUTC: zone !== 'local' });
    this.chart.setOption(themeOption(group.unit));
    this.onTheme = () => this.chart.setOption(themeOption(this.unit));
    addEventListener('livedata:theme', this.onTheme);
    // Zoom and pan on the time axis (wheel, pinch, drag): while the zoom reaches the right
    // end the view follows the live edge; zoomed away, it stays on the times it shows
    // until a double click (or zooming back to the end) follows again.
    this.following = true;
    this.zoom = null; // [from, to] in ms while not following
    this.chart.on('datazoom', () => this.onZoom());
    this.chart.getZr().on('dblclick', () => {
      this.following = true;
      this.zoom = null;
      this.chart.dispatchAction({ type: 'dataZoom', start: 0, end: 100 });
    });
    this.resizeObserver = new ResizeObserver(() => this.chart.resize());
    this.resizeObserver.observe(el);
  }

  baseOption(unit) {
    return {
      animation: false,
      color: PALETTE,
      textStyle: { fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif' },
      grid: { left: 8, right: 30, top: 40, bottom: 4, containLabel: true }, // room for the last time label
      // The unit above the y axis as text of its own: as the axis name it was cut at the
      // canvas' left edge ("km/h" drawn as "ɜm/h").
      graphic: [{ id: 'unit', type: 'text', left: 8, top: 8, style: { text: unitText(unit) } }],
      dataZoom: [{ type: 'inside', xAxisIndex: 0, filterMode: 'none' }],
      // Right-aligned on the row of the y-axis name; each entry shows the latest value,
      // in a fixed-width box so that the entries do not shift as values change.
      legend: {
        type: 'scroll',
        top: 8,
        right: 12,
        left: 80,
        align: 'left',
        icon: 'roundRect',
        itemWidth: 12,
        itemHeight: 4,
        itemGap: 16,
        textStyle: {
          fontSize: 12,
          rich: { value: { width: 88, fontWeight: 600, padding: [0, 0, 0, 6] } },
        },
        formatter: (name) => this.legendLabel(name),
      },
      tooltip: {
        trigger: 'axis',
        axisPointer: { type: 'line' },
        formatter: (params) => this.tooltip(params),
      },
      xAxis: {
        type: 'time',
        axisLine: {},
        axisTick: { show: false },
        // The window moves every second, so its ends rarely fall on a tick: no end labels.
        axisLabel: {
          hideOverlap: true,
          showMinLabel: false,
          showMaxLabel: false,
          formatter: '{HH}:{mm}:{ss}',
        },
        splitLine: { show: false },
      },
      yAxis: {
        type: 'value',
        scale: true,
        axisLabel: { formatter: (value) => numberFormat.format(value) },
      },
      series: this.fields.map((field) => ({
        id: field,
        name: field,
        type: 'line',
        showSymbol: false,
        smooth: false,
        lineStyle: { width: 1.6 },
        emphasis: { disabled: true },
        data: [],
      })),
    };
  }

  /** Redraw with the feed's points and move the window of `windowMs` to end at `now`. */
  update(series, now, windowMs = WINDOW_MS, gapMs = GAP_MS) {
    this.latest = new Map(this.fields.map((field) => [field, series?.get(field)?.at(-1)?.[1]]));
    this.extent = [now - windowMs, now];
    this.windowMs = windowMs;
    this.chart.setOption({
      xAxis: { min: now - windowMs, max: now, axisLabel: { formatter: axisFormat(windowMs, this.zone) } },
      dataZoom: this.following ? [{}] : [{ startValue: this.zoom[0], endValue: this.zoom[1] }],
      legend: { formatter: (name) => this.legendLabel(name) },
      series: this.fields.map((field) => ({ id: field, data: withGaps(series?.get(field) ?? [], gapMs) })),
    });
  }

  /** Show times in `zone` ('local', 'UTC' or an IANA zone): axis labels and tooltips. */
  setZone(zone) {
    this.zone = zone;
    this.chart.setOption({
      useUTC: zone !== 'local',
      xAxis: { axisLabel: { formatter: axisFormat(this.windowMs, zone) } },
    });
  }

  /** After the user zoomed or panned: follow the live edge when the view reaches it. */
  onZoom() {
    const zoom = this.chart.getOption().dataZoom?.[0];
    if (!zoom || !this.extent) return;
    const [min, max] = this.extent;
    const at = (pct, value) => value ?? min + ((max - min) * pct) / 100;
    const from = at(zoom.start, zoom.startValue);
    const to = at(zoom.end, zoom.endValue);
    this.following = to >= max - (max - min) * 0.005;
    this.zoom = this.following ? null : [from, to];
  }

  /** The chart as a PNG file, downloaded by the browser. */
  downloadPng(filename) {
    const link = document.createElement('a');
    link.href = this.chart.getDataURL({ type: 'png', pixelRatio: 2, backgroundColor: cssVar('--surface') });
    link.download = filename;
    link.click();
  }

  legendLabel(field) {
    const value = this.latest?.get(field);
    const info = this.infos.get(field);
    const unit = info?.unit;
    const text = value == null ? '–' : `${formatValue(value, info)}${unit ? ` ${unit}` : ''}`;
    return `${field}{value|${text}}`;
  }

  tooltip(params) {
    const first = params.find((p) => p.value[1] != null);
    if (!first) return '';
    const rows = params
      .filter((p) => p.value[1] != null)
      .map((p) => {
        const info = this.infos.get(p.seriesName);
        return `<div class="tt-row">${p.marker}<span class="tt-name">${escapeHtml(p.seriesName)}</span>`
          + `<b>${escapeHtml(formatValue(p.value[1], info))}</b>&nbsp;${escapeHtml(info?.unit ?? '')}</div>`;
      });
    return `<div class="tt-time">${timeFormat(this.zone).format(first.value[0])}</div>${rows.join('')}`;
  }

  dispose() {
    removeEventListener('livedata:theme', this.onTheme);
    this.resizeObserver.disconnect();
    this.chart.dispose();
  }
}

const zoneFormats = new Map(); // IANA zone → formatter of its wall-clock parts

/**
 * The time axis labels for a window of `windowMs`: an ECharts template in the browser's
 * zone or UTC; for an IANA zone (which ECharts cannot place ticks in) the ticks stay on
 * the UTC grid and each label is that instant's wall-clock time in the zone.
 */
function axisFormat(windowMs, zone = 'local') {
  const parts = windowMs > 86_400_000 ? ['month', 'day', 'hour', 'minute']
    : windowMs > 120_000 ? ['hour', 'minute'] : ['hour', 'minute', 'second'];
  if (zone === 'local' || zone === 'UTC') {
    const tokens = { month: '{MM}', day: '{dd}', hour: '{HH}', minute: '{mm}', second: '{ss}' };
    return label(parts.map((part) => tokens[part]));
  }
  let format = zoneFormats.get(zone);
  if (!format) {
    format = new Intl.DateTimeFormat('en-GB', {
      timeZone: zone, month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
      second: '2-digit', hourCycle: 'h23',
    });
    zoneFormats.set(zone, format);
  }
  return (value) => {
    const got = Object.fromEntries(format.formatToParts(value).map((p) => [p.type, p.value]));
    return label(parts.map((part) => got[part]));
  };
}

/** [month, day, hour, minute(, second)] → "MM-dd HH:mm(:ss)"; [hour, …] → "HH:mm(:ss)". */
function label(values) {
  return values.length === 4 ? `${values[0]}-${values[1]} ${values[2]}:${values[3]}` : values.join(':');
}

function withGaps(points, gapMs) {
  const out = [];
  for (let i = 0; i < points.length; i += 1) {
    if (i > 0 && points[i][0] - points[i - 1][0] > gapMs) out.push([points[i - 1][0] + 1, null]);
    out.push(points[i]);
  }
  return out;
}
