"""Rich tables that show each stage's results in the terminal."""

from __future__ import annotations

from rich.table import Table

from edgesplit.compress.rate import CompressReport
from edgesplit.model.artifact import SplitRecord
from edgesplit.model.zoo import ZooEntry
from edgesplit.plan.schema import ChainPlanReport, PlanEntry, PlanReport
from edgesplit.privacy.attacks import IMAGE_ATTACKS, attack_label
from edgesplit.privacy.schema import AuditReport
from edgesplit.profile import ProfileReport

__all__ = ["audit_table", "compress_table", "crossing_text", "human_bytes", "human_count", "pareto_view",
           "plan_table", "profile_table", "split_table", "switch_table_view", "zoo_table"]


def human_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as network rates use)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def human_count(count: float) -> str:
    """12694144 -> '12.69 M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f}"


def crossing_text(shapes: list[list[int]]) -> str:
    return " + ".join("×".join(map(str, shape)) or "scalar" for shape in shapes)


def profile_table(report: ProfileReport) -> Table:
    """One row per candidate cut: MACs on each side, what crosses, and measured latencies."""
    model = report.model
    calibration = report.calibration
    checked = ("" if calibration is None else
               f"; heads summed from node times, {len(calibration.cuts)} cuts measured whole: median error "
               f"{calibration.head_median_abs_error:.0%}, worst {calibration.head_max_abs_error:.0%}")
    table = Table(title=f"{model.name}: {human_count(model.macs)} MACs, {human_count(model.params)} parameters, "
                        f"{model.cuts} cuts (traced with torch.{model.tracer}); whole model {report.model_ms:.3f} ms"
                        f"{checked}")
    for column in ("cut", "after node", "head MACs", "tail MACs", "crossing tensors", "crossing bytes",
                   "head ms", "Σ nodes ms", "Σ vs head", "tail ms", "head peak mem"):
        table.add_column(column, justify="left" if column in ("after node", "crossing tensors") else "right",
                         overflow="fold")
    smallest = min((c.crossing_bytes for c in report.cuts[1:-1]), default=None)
    for cut in report.cuts:
        style = "bold green" if cut.crossing_bytes == smallest and 0 < cut.position < model.nodes else None
        table.add_row(str(cut.index), cut.after, human_count(cut.head_macs), human_count(cut.tail_macs),
                      crossing_text([t.shape for t in cut.crossing]), human_bytes(cut.crossing_bytes),
                      f"{cut.head_ms:.3f}", f"{cut.head_ms_summed:.3f}",
                      f"{cut.head_ms_error:+.0%}" if cut.position and cut.measured else "", f"{cut.tail_ms:.3f}",
                      human_bytes(cut.head_peak_bytes), style=style)
    return table


def split_table(record: SplitRecord) -> Table:
    """The tensors that cross a saved split."""
    table = Table(title=f"{record.model['name']} split at cut {record.cut.index} (after {record.cut.after}): "
                        f"{human_bytes(record.crossing_bytes)} cross per inference")
    for column in ("tensor", "shape", "dtype", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for tensor in record.crossing:
        table.add_row(tensor.name, "×".join(map(str, tensor.shape)), tensor.dtype, human_bytes(tensor.nbytes))
    return table


def zoo_table(entries: list[ZooEntry], params: dict[str, int]) -> Table:
    """The built-in models with their documented input shapes."""
    table = Table(title="edgesplit zoo")
    for column in ("name", "input shape", "parameters", "description"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.name, ",".join(map(str, entry.input_shape)), human_count(params[entry.name]),
                      entry.description)
    return table


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def plan_table(report: PlanReport, top: int = 10) -> Table:
    """The ``top`` ranked plans (and always all-device and all-server) with their latency and energy breakdown."""
    chosen = report.chosen
    table = Table(caption="codec ms: encode on the device + decode on the server; ×device, ×server: speed-up over "
                          "all-device and the best all-server plan",
                  title=f"{report.model} on {report.device.spec} → {report.link.spec} "
                        f"({report.link.uplink_mbps:g}/{report.link.downlink_mbps:g} Mbit/s, {report.link.rtt_ms:g} ms) "
                        f"→ {report.server.spec}; codec {report.codec}; objective {report.objective}")
    columns = ("#", "plan", "device ms", "codec ms", "uplink ms", "RTT", "server ms", "down ms", "latency ms",
               "energy mJ", "sent", "×device", "×server", "status")
    for column in columns:
        table.add_column(column, justify="left" if column in ("plan", "status") else "right", overflow="fold",
                         min_width=18 if column == "plan" else None)
    shown = report.ranked[:top]
    for extra in (report.all_device, report.all_server):
        if all(entry.label != extra.label for entry in shown):
            shown.append(extra)
    rank = {entry.label: i + 1 for i, entry in enumerate(report.ranked)}
    for entry in shown:
        costs = entry.costs
        style = "bold green" if entry.label == chosen.label else ("dim" if not entry.feasible else None)
        table.add_row(str(rank[entry.label]), entry.label, _ms(costs.device_ms), _ms(costs.encode_ms + costs.decode_ms),
                      _ms(costs.uplink_ms), _ms(costs.rtt_ms), _ms(costs.server_ms),
                      _ms(costs.downlink_ms), _ms(costs.latency_ms),
                      "" if costs.energy_mj is None else _ms(costs.energy_mj), human_bytes(costs.uplink_bytes),
                      f"{report.all_device.costs.latency_ms / costs.latency_ms:.2f}×",
                      f"{report.all_server.costs.latency_ms / costs.latency_ms:.2f}×",
                      "chosen" if entry.label == chosen.label else ("ok" if entry.feasible else
                                                                    "; ".join(entry.violations)), style=style)
    return table


def switch_table_view(report: PlanReport) -> Table:
    """The uplink bandwidth ranges in which each plan is best: what the runtime switches on."""
    table = Table(title=f"switch table ({report.objective}, uplink {report.switch_table[0].low_mbps:g}–"
                        f"{report.switch_table[-1].high_mbps:g} Mbit/s; RTT and downlink ratio of {report.link.spec})")
    for column in ("from Mbit/s", "to Mbit/s", "best plan"):
        table.add_column(column, justify="left" if column == "best plan" else "right")
    for entry in report.switch_table:
        table.add_row(f"{entry.low_mbps:g}", f"{entry.high_mbps:g}", entry.label)
    return table


def chain_table(report: ChainPlanReport) -> Table:
    """A chain plan's placements: nodes and time per tier, bytes per link, latency, throughput, energy."""
    tiers = len(report.machines)
    table = Table(title=f"{report.model} on {report.topology}; codec {report.codec}; objective {report.objective}",
                  caption="per tier: compute nodes / ms (decode and encode included); per link: bytes sent on; "
                          "'-': not used (the output is computed on an earlier tier)")
    table.add_column("placement", overflow="fold", min_width=24)
    for t in range(tiers):
        table.add_column(f"tier {t}\n{report.machines[t].spec}", justify="right")
        if t < tiers - 1:
            table.add_column(f"link {t}\n{report.links[t].spec}", justify="right")
    for column in ("latency ms", "fps", "energy mJ", "status"):
        table.add_column(column, justify="left" if column == "status" else "right", overflow="fold")
    rows = [report.chosen, *[e for e in report.baselines if e.assignment != report.chosen.assignment
                              or e.last_tier != report.chosen.last_tier]]
    for entry in sorted(rows, key=lambda e: (e is not report.chosen, not e.feasible, e.objective)):
        cells = []
        for t in range(tiers):
            if t <= entry.last_tier:
                stage = entry.stages[t]
                busy = stage.compute_ms + stage.decode_ms + stage.encode_ms
                cells.append(f"{stage.nodes} / {_ms(busy)}" if stage.nodes else f"relay / {_ms(busy)}")
            else:
                cells.append("-")
            if t < tiers - 1:
                cells.append(human_bytes(entry.hops[t].payload_bytes) if t < entry.last_tier else "-")
        chosen = entry is report.chosen
        table.add_row(entry.label, *cells, _ms(entry.latency_ms), f"{entry.throughput_fps:.3g}",
                      "" if entry.energy_mj is None else _ms(entry.energy_mj),
                      "chosen" if chosen else ("ok" if entry.feasible else "; ".join(entry.violations)),
                      style="bold green" if chosen else ("dim" if not entry.feasible else None))
    return table


def chain_switch_view(report: ChainPlanReport) -> Table:
    """The first link's bandwidth ranges in which each placement is best (later links as planned)."""
    table = Table(title=f"switch table ({report.objective}; first link {report.links[0].spec} at other rates, "
                        "later links as planned)")
    for column in ("from Mbit/s", "to Mbit/s", "best placement"):
        table.add_column(column, justify="left" if column == "best placement" else "right")
    for entry in report.switch_table:
        table.add_row(f"{entry.low_mbps:g}", f"{entry.high_mbps:g}", entry.label)
    return table


def pareto_view(report: PlanReport) -> Table:
    """The plans no other plan beats on latency, device energy and bytes sent at once."""
    table = Table(title="Pareto front: latency vs device energy vs bytes sent")
    for column in ("plan", "latency ms", "energy mJ", "sent"):
        table.add_column(column, justify="left" if column == "plan" else "right")
    by_label: dict[str, PlanEntry] = {entry.label: entry for entry in report.ranked}
    for label in report.pareto:
        costs = by_label[label].costs
        table.add_row(label, _ms(costs.latency_ms), "" if costs.energy_mj is None else _ms(costs.energy_mj),
                      human_bytes(costs.uplink_bytes))
    return table


def compress_table(report: CompressReport) -> Table:
    """One row per configuration: bytes per inference, compression, accuracy and its drop, codec time."""
    table = Table(title=f"{report.model} on {report.data}, cut {report.cut_index} after {report.after}: "
                        f"{human_bytes(report.float32_bytes)} of float32 features per image, baseline accuracy "
                        f"{report.baseline_accuracy:.2%} on {report.eval_images} images")
    for column in ("configuration", "bytes / inference", "vs float32", "accuracy", "drop", "encode ms",
                   "decode ms"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for config in report.configurations:
        style = "dim" if config.kind == "input" else None
        table.add_row(config.name, f"{config.bytes_per_inference:,.0f}", f"{config.compression:.1f}×",
                      f"{config.accuracy:.2%}", f"{config.accuracy_drop * 100:+.2f} pt", f"{config.encode_ms:.3f}",
                      f"{config.decode_ms:.3f}", style=style)
    return table


def audit_table(report: AuditReport) -> Table:
    """One row per cut and defense: what crosses, task accuracy, each attack's PSNR/SSIM, probes, dCor."""
    accuracy = f"{report.model_accuracy:.1%}" if report.model_accuracy is not None else "n/a"
    baseline = report.mean_image
    table = Table(title=f"{report.model}: privacy audit on {report.victims} victims ({report.data}), attacker holds "
                        f"{report.aux_images} aux images ({report.aux}); codec {report.codec or 'fp32'}; whole model "
                        f"{accuracy}, chance {report.chance:.1%}; mean-image baseline "
                        f"{baseline.psnr.mean:.1f} dB / SSIM {baseline.ssim.mean:.2f}")
    attacks = [a for a in IMAGE_ATTACKS if a in report.attacks]
    headers = ["cut", "after", "defense", "crossing", "task acc"]
    headers += [f"{attack_label(a)} PSNR / SSIM" for a in attacks]
    headers += ["probe acc (linear / mlp)"] if "probe" in report.attacks else []
    headers += ["dCor"]
    bounded = any(row.fisher is not None for row in report.rows)
    headers += ["dFIL (σ) · PSNR bound"] if bounded else []
    for header in headers:
        table.add_column(header, justify="left" if header in ("after", "defense", "crossing") else "right")
    for row in report.rows:
        cells = [str(row.position), row.after, row.defense, crossing_text(row.crossing),
                 f"{row.task_accuracy:.1%}" if row.task_accuracy is not None else "n/a"]
        scores = {a.attack: a for a in row.attacks}
        best = row.best_attack()
        for attack in attacks:
            score = scores.get(attack)
            text = (f"{score.psnr.mean:.1f} dB" + (f" (median {score.psnr.median:.1f})" if score.psnr.median is not None
                                                  else "")
                    + f" / {score.ssim.mean:.2f} ±{(score.ssim.high - score.ssim.low) / 2:.2f}" if score else "—")
            cells.append(f"[bold]{text}[/]" if score is not None and score is best and len(attacks) > 1 else text)
        if "probe" in report.attacks:
            cells.append(" / ".join(f"{p.accuracy.mean:.1%}" for p in row.probes) or "—")
        dcor = row.distance_correlation
        cells.append(f"{dcor.mean:.2f}" if dcor else "—")
        if bounded:
            fisher = row.fisher
            cells.append("—" if fisher is None else f"{fisher.dfil.mean:.3g} ({fisher.sigma:g}) · " + (
                f"≤{fisher.psnr_bound:.1f} dB" if fisher.psnr_bound is not None else "none"))
        table.add_row(*cells)
    return table
