"""Abdominal CT phantoms in Hounsfield units with BTCV organ labels, rendered from a drawn abdomen.

Painting goes from the outside in and from background to foreground: air, trunk fat, muscle wall, cavity fat,
thorax above the diaphragm, bowel, solid organs, vessels, muscles and bones. A later structure overwrites an
earlier one where they overlap, which is how organs come to indent each other (the kidney's impression on the
liver, the pancreas between the stomach and the great vessels). Each organ gets a gentle HU texture; the image is
then blurred by a CT point spread function, given in-plane-correlated noise, and cut to the reconstruction circle.

With an acquisition profile other than `fixed` (see acquisition.py) the case also gets a drawn contrast phase and
tissue HU, reconstruction kernel (PSF, noise level and grain), grid, field of view, body size and position, table
and arms; the drawn patient is painted in its own millimetres on the scanner grid mapped through the body scale
and off-centring, so labels and HU stay aligned whatever the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .acquisition import (CT_ANATOMY, CTAcquisition, check_profile, draw_ct_acquisition, draw_ct_anatomy,
                          reach_down_to_pelvis)
from .ct_anatomy import AbdomenSubject, Solid, draw_abdomen, vary_abdomen
from .ct_lesions import paint_lesions, with_lesions
from .ct_pelvis import paint_pelvis, with_pelvis
from .geometry import Grid, lps_grid, parse_shape
from .shapes import Ellipsoid, Tube

BTCV_LABELS = {
    "spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4, "esophagus": 5, "liver": 6, "stomach": 7,
    "aorta": 8, "ivc": 9, "portal_vein": 10, "pancreas": 11, "right_adrenal": 12, "left_adrenal": 13,
}
BTCV_SHAPE = (512, 512, 100)
BTCV_SPACING = (0.8, 0.8, 2.5)
FIELD_CENTRE_RAS = (0.0, -15.0, 25.0)
AIR_OUTSIDE_SCAN = -1024.0
ORAL_CONTRAST_KEY = "oral_contrast"  # AbdomenSubject.hu key of the bowel and stomach fluid when set
_REFERENCE_VOXEL_MM3 = 0.8 * 0.8 * 2.5  # the noise level drawn per case is for this voxel size


def btcv_grid(shape=None, spacing=None, centre_ras=FIELD_CENTRE_RAS) -> Grid:
    """512 x 512 x 100 voxels of 0.8 x 0.8 x 2.5 mm by default; a shape alone keeps that field of view."""
    default_fov = np.asarray(BTCV_SHAPE) * np.asarray(BTCV_SPACING)
    shape = parse_shape(shape if shape is not None else BTCV_SHAPE)
    spacing = default_fov / np.asarray(shape) if spacing is None else np.asarray(spacing, float)
    return lps_grid(shape, spacing, centre_ras)


@dataclass
class CTPhantom:
    image: np.ndarray  # float32 (k, j, i) HU, whole numbers
    label: np.ndarray  # uint8 (k, j, i) BTCV labels
    ijk_to_ras: np.ndarray
    info: dict


class _Canvas:
    def __init__(self, grid: Grid, subject: AbdomenSubject):
        self.grid = grid
        self.subject = subject
        self.hu = np.full(grid.array_shape, subject.hu["gas"], np.float32)
        self.label = np.zeros(grid.array_shape, np.uint8)
        x, y, z = grid.world_axes()
        self.x, self.y, self.z = x, y, z
        trunk = subject.trunk
        self.trunk_level = trunk.level(x[0], y[0])  # (nj, ni)
        self.wall_level = trunk.level(x[0], y[0], trunk.fat)
        self.cavity = trunk.level(x[0], y[0], trunk.cavity()) < 1.0
        self.diaphragm = subject.diaphragm.height(x[0], y[0])

    def confine(self, region, z, where: str) -> np.ndarray:
        plane = (region[1], region[2])
        if where == "abdomen":
            return self.cavity[plane] & (z < self.diaphragm[plane] - 4.0)
        if where == "thorax":
            return self.cavity[plane] & (z > self.diaphragm[plane] + 2.0)
        if where == "cavity":
            return np.broadcast_to(self.cavity[plane], (1,) + self.cavity[plane].shape)
        if where == "all":
            return np.ones((1,) + self.cavity[plane].shape, bool)
        return np.broadcast_to(self.trunk_level[plane] < 1.0, (1,) + self.cavity[plane].shape)

    def paint(self, solid: Solid, fill, label: int | None = 0, where: str = "abdomen", only_label: int | None = None):
        """Paint solid with fill(level, x, y, z) evaluated at the painted points (or a number). label None keeps
        the labels underneath; only_label restricts painting to voxels already carrying that label."""
        region = self.grid.region(*solid.bounds())
        if region is None:
            return
        x, y, z = self.grid.world_axes(region)
        level = solid.level(x, y, z)
        inside = (level < 1.0) & self.confine(region, z, where)
        if only_label is not None:
            inside &= self.label[region] == only_label
        k, j, i = np.nonzero(inside)
        if k.size == 0:
            return
        values = fill(level[k, j, i], x[0, 0, i], y[0, j, 0], z[k, 0, 0]) if callable(fill) else fill
        self.hu[region][k, j, i] = values
        if label is not None:
            self.label[region][k, j, i] = label

    def textured(self, hu_value: float, texture_hu: float, organ: str | None = None):
        texture_hu = self.subject.texture_hu.get(organ, texture_hu)
        field = self.subject.fields["texture"]
        return lambda level, x, y, z: np.float32(hu_value) + np.float32(texture_hu) * field(x, y, z)


def _paint_trunk(canvas: _Canvas):
    subject, hu = canvas.subject, canvas.subject.hu
    body = canvas.trunk_level < 1.0
    skin = body & (canvas.trunk_level > 1.0 - 2.0 / subject.trunk.half_width)
    linea_alba = (np.abs(canvas.x[0]) < 4.0) & (canvas.y[0] > 0)  # the two rectus muscles meet in a fat seam
    wall = (canvas.wall_level < 1.0) & ~linea_alba
    # Fat and muscle of the wall get no texture of their own: scanner noise dominates there.
    for mask2d, value in ((body, hu["fat"]), (skin, hu["skin"]), (wall, hu["muscle"]), (canvas.cavity, hu["fat"] + 5)):
        canvas.hu[:, mask2d] = value


def _paint_thorax(canvas: _Canvas):
    """Lung bases, mediastinal fat and the diaphragm's muscle above the abdominal organs."""
    subject, hu = canvas.subject, canvas.subject.hu
    spine = subject.spine
    x, y, z = canvas.x, canvas.y, canvas.z
    above = canvas.cavity & (z > canvas.diaphragm + 2.0)
    mediastinum = (np.abs(x + 10.0) < 28.0) & (y > spine.body_y - 5.0)
    paraspinal_gutter = (np.abs(x) < spine.body_radii[0] + 6.0) & (y < spine.front + 4.0)
    lung = above & ~mediastinum & ~paraspinal_gutter
    k, j, i = np.nonzero(lung)
    field = subject.fields["lung"](x[0, 0, i], y[0, j, 0], z[k, 0, 0])
    # Peaks of the field stand for the small vessels seen in lung bases.
    canvas.hu[k, j, i] = np.where(field > 1.9, np.float32(hu["aorta"] - 20.0), np.float32(hu["lung"]) + 25.0 * field)
    muscle = canvas.cavity & (z <= canvas.diaphragm + 2.0) & (z > canvas.diaphragm - 4.0)
    canvas.hu[muscle] = hu["muscle"]


def _lumen_fluid(hu: dict) -> float:
    """HU of the fluid in the stomach, duodenum and small bowel: the body's fluid, unless oral contrast fills them."""
    return hu.get(ORAL_CONTRAST_KEY, hu["fluid"])


def _paint_bowel(canvas: _Canvas):
    hu, fields = canvas.subject.hu, canvas.subject.fields

    def colon(level, x, y, z):
        mottled = fields["bowel"](x, y, z)
        lumen = np.where(mottled > -0.5, np.float32(hu["gas"]), np.float32(hu["stool"]) + 30.0 * mottled)
        return np.where(level > 0.86, np.float32(hu["wall"]), lumen)

    def fluid_loops(level, x, y, z):
        bubbles = fields["bubbles"](x, y, z) > 2.0
        lumen = np.where(bubbles, np.float32(hu["gas"]), np.float32(_lumen_fluid(hu) + 10.0))
        return np.where(level > 0.75, np.float32(hu["wall"]), lumen)

    organs = canvas.subject.organs
    canvas.paint(organs["small_bowel"], fluid_loops)
    canvas.paint(organs["colon"], colon)
    canvas.paint(organs["duodenum"], fluid_loops)


def _paint_stomach(canvas: _Canvas):
    hu, stomach = canvas.subject.hu, canvas.subject.organs["stomach"]
    tube = stomach.shapes[0]
    # Supine patient: gas floats to the most anterior part of the lumen, above a flat air-fluid level.
    gas_level = float((tube.points[:, 1] + 0.8 * tube.radii).max()) - canvas.subject.stomach_gas_depth_mm

    def fill(level, x, y, z):
        lumen = np.where(y > gas_level, np.float32(hu["gas"]), np.float32(_lumen_fluid(hu)))
        return np.where(level > 0.84, np.float32(hu["wall"]), lumen)

    canvas.paint(stomach, fill, BTCV_LABELS["stomach"])


def _paint_kidney(canvas: _Canvas, name: str):
    hu, solid = canvas.subject.hu, canvas.subject.organs[name]
    kidney: Ellipsoid = solid.shapes[0]
    # Perirenal fat inside Gerota's fascia keeps neighbouring organs off the kidney.
    canvas.paint(Solid((kidney.scaled(1.22),), 0.06, solid.field), hu["fat"] + 5.0, 0)
    medial = -np.sign(kidney.centre[0])
    sinus = Ellipsoid(kidney.centre + np.array([medial * 0.45 * kidney.radii[0], 4.0, 0.0]), kidney.radii * 0.45,
                      kidney.rotation)
    pelvis = sinus.scaled(0.45)
    cortex_level = 1.0 - 6.0 / float(kidney.radii.mean())
    texture = canvas.textured(0.0, 4.0)

    def fill(level, x, y, z):
        values = np.where(level > cortex_level, np.float32(hu["kidney_cortex"]), np.float32(hu["kidney_medulla"]))
        values = np.where(sinus.level(x, y, z) < 1.0, np.float32(hu["renal_sinus"]), values)
        values = np.where(pelvis.level(x, y, z) < 1.0, np.float32(hu["fluid"] - 5.0), values)
        return values + texture(level, x, y, z)

    canvas.paint(solid, fill, BTCV_LABELS[name])


def _paint_organs(canvas: _Canvas):
    organs, hu = canvas.subject.organs, canvas.subject.hu
    _paint_stomach(canvas)
    canvas.paint(organs["liver"], canvas.textured(hu["liver"], 6.0), BTCV_LABELS["liver"])
    canvas.paint(organs["intrahepatic_portal"], hu["portal"] - 10.0, None, only_label=BTCV_LABELS["liver"])
    canvas.paint(organs["hepatic_veins"], hu["ivc"], None, only_label=BTCV_LABELS["liver"])
    canvas.paint(organs["gallbladder"], canvas.textured(hu["gallbladder"], 2.0), BTCV_LABELS["gallbladder"])
    canvas.paint(organs["spleen"], canvas.textured(hu["spleen"], 5.0, "spleen"), BTCV_LABELS["spleen"])
    canvas.paint(organs["pancreas"], canvas.textured(hu["pancreas"], 10.0), BTCV_LABELS["pancreas"])
    for side in ("right", "left"):
        _paint_kidney(canvas, f"{side}_kidney")
        canvas.paint(organs[f"{side}_adrenal"], canvas.textured(hu["adrenal"], 4.0), BTCV_LABELS[f"{side}_adrenal"])
    canvas.paint(organs["renal_veins"], hu["ivc"], 0)
    canvas.paint(organs["sma"], hu["aorta"], 0)
    for name in ("splenic_vein", "portal_vein", "smv"):
        canvas.paint(organs[name], hu["portal"], BTCV_LABELS["portal_vein"])
    canvas.paint(organs["ivc"], hu["ivc"], BTCV_LABELS["ivc"], where="cavity")
    canvas.paint(organs["aorta"], hu["aorta"], BTCV_LABELS["aorta"], where="cavity")
    canvas.paint(organs["esophagus"], lambda level, x, y, z: np.where(level < 0.25, np.float32(hu["gas"]),
                                                                      np.float32(hu["esophagus"])),
                 BTCV_LABELS["esophagus"], where="cavity")
    canvas.paint(organs["heart"], lambda level, x, y, z: np.where(level > 0.8, np.float32(hu["muscle"] + 5.0),
                                                                  np.float32(hu["heart"])), 0, where="thorax")


def _paint_muscles(canvas: _Canvas):
    subject, hu = canvas.subject, canvas.subject.hu
    spine = subject.spine
    psoas = []
    for side in (1, -1):
        psoas.append(Tube(np.array([[side * (spine.body_radii[0] + 2.0), spine.body_y + 2.0, 60.0],
                                    [side * (spine.body_radii[0] + 16.0), spine.body_y + 6.0, -220.0]]),
                          np.array([4.0, 27.0])))
    canvas.paint(Solid(tuple(psoas)), canvas.textured(hu["muscle"], 5.0), 0, where="abdomen")
    quadratus = tuple(Tube(np.array([[side * (spine.body_radii[0] + 38.0), spine.body_y - 22.0, 45.0],
                                     [side * (spine.body_radii[0] + 42.0), spine.body_y - 20.0, -220.0]]),
                           np.array([6.0, 14.0])) for side in (1, -1))
    canvas.paint(Solid(quadratus), canvas.textured(hu["muscle"], 5.0), 0, where="body")
    erector = tuple(Ellipsoid(np.array([side * 27.0, spine.canal_y - 10.0, 0.0]), np.array([25.0, 21.0, 400.0]),
                              np.eye(3)) for side in (1, -1))
    canvas.paint(Solid(erector), canvas.textured(hu["muscle"], 5.0), 0, where="body")


def _paint_spine(canvas: _Canvas):
    subject, hu = canvas.subject, canvas.subject.hu
    spine = subject.spine
    bottom = -1e4 if subject.pelvis is None else subject.pelvis.promontory_z  # the sacrum continues it
    low = np.array([-70.0, spine.canal_y - spine.canal_radius - 35.0, bottom])
    high = np.array([70.0, spine.front + 2.0, 1e4])
    region = canvas.grid.region(low, high)
    if region is None:
        return
    x, y, z = canvas.grid.world_axes(region)
    hu_view, label_view = canvas.hu[region], canvas.label[region]
    radial = np.sqrt((x / np.float32(spine.body_radii[0])) ** 2 + ((y - np.float32(spine.body_y))
                                                                  / np.float32(spine.body_radii[1])) ** 2)
    height = np.mod(z - np.float32(spine.phase_mm), np.float32(spine.level_mm))  # position within one level
    disc = height < spine.disc_mm
    endplate = (height < spine.disc_mm + 1.2) | (height > spine.level_mm - 1.2)
    in_body = radial < 1.0
    cortex = in_body & ((radial > 1.0 - 1.8 / float(np.mean(spine.body_radii))) | endplate)
    bone_texture = subject.fields["bone"](x, y, z)
    cancellous = np.float32(hu["cancellous"]) + 45.0 * bone_texture
    values = np.where(cortex, np.float32(hu["cortical"]), cancellous)
    values = np.where(disc, np.float32(90.0), values)
    canal_distance = np.sqrt(x ** 2 + (y - np.float32(spine.canal_y)) ** 2)
    arch = ((canal_distance > spine.canal_radius) & (canal_distance < spine.canal_radius + 5.5)
            & (y < spine.canal_y + 4.0))
    spinous = ((x / 4.5) ** 2 + ((y - np.float32(spine.canal_y - spine.canal_radius - 15.0)) / 15.0) ** 2) < 1.0
    transverse = (((np.abs(x) - np.float32(spine.canal_radius + 18.0)) / 15.0) ** 2
                  + ((y - np.float32(spine.canal_y + 3.0)) / 5.0) ** 2 < 1.0)
    transverse = transverse & (height > spine.disc_mm + 7.0) & (height < spine.level_mm - 7.0)
    posterior = (arch | spinous | transverse) & ~disc
    canal = canal_distance <= spine.canal_radius
    values = np.where(posterior, np.float32(hu["cortical"] * 0.75) + 40.0 * bone_texture, values)
    values = np.where(canal, np.float32(hu["canal"]), values)
    painted = np.broadcast_to(in_body | posterior | canal, values.shape)
    hu_view[painted] = np.broadcast_to(values, painted.shape)[painted]
    label_view[painted] = 0


def _paint_ribs(canvas: _Canvas):
    """Ribs leave the spine, wrap round the body wall and slope down towards the front, so each axial slice
    cuts a row of oval sections; cartilage continues the lower ribs towards the costal margin."""
    subject, hu = canvas.subject, canvas.subject.hu
    trunk = subject.trunk
    inset = tuple(v - 4.0 for v in trunk.cavity())
    ring = trunk.level(canvas.x[0], canvas.y[0], inset)
    radius_here = np.sqrt(canvas.x[0] ** 2 + canvas.y[0] ** 2) / np.maximum(ring, 1e-3)
    radial_mm = (ring - 1.0) * radius_here
    band = np.abs(radial_mm) < 8.0
    j, i = np.nonzero(band)
    if j.size == 0:
        return
    x, y = canvas.x[0, 0, i], canvas.y[0, j, 0]
    radial = radial_mm[j, i]
    angle = np.arctan2(np.abs(x) / trunk.half_width, -y / trunk.back)  # 0 at the back, pi at the front
    z = canvas.z[:, 0, :]  # (nk, 1)
    start = np.deg2rad(20.0)
    texture = subject.fields["bone"](canvas.x[0, 0, i][None], canvas.y[0, j, 0][None], z)
    for rib in subject.ribs:
        on_side = (np.sign(x) == rib.side) & (angle > start) & (angle < rib.cartilage_angle)
        if not on_side.any():
            continue
        progress = np.clip((angle - start) / (rib.end_angle - start), 0.0, None)
        centre_z = rib.head_z - rib.drop_mm * progress ** 1.3
        section = (radial / rib.half_thickness) ** 2 + ((z - centre_z) / rib.half_height) ** 2
        inside = (section < 1.0) & on_side
        if not inside.any():
            continue
        bone = angle <= rib.end_angle
        values = np.where(section > 0.55, np.float32(hu["cortical"]), np.float32(hu["cancellous"]) + 40.0 * texture)
        values = np.where(bone, values, np.float32(hu["cartilage"]))
        k, p = np.nonzero(inside)
        canvas.hu[k, j[p], i[p]] = values[k, p]
        canvas.label[k, j[p], i[p]] = 0


def _paint_table(canvas: _Canvas):
    """The patient couch under the back: a foam-filled carbon shell, slightly curved."""
    x, y = canvas.x[0], canvas.y[0]
    top = -canvas.subject.trunk.back - 2.0 + 0.0006 * x ** 2
    depth = top - y
    shell = ((depth > 0) & (depth < 2.0)) | ((depth > 38.0) & (depth < 40.0))
    foam = (depth >= 2.0) & (depth <= 38.0)
    within = np.abs(x) < 230.0
    canvas.hu[:, shell & within] = 250.0
    canvas.hu[:, foam & within] = -850.0


def _paint_arms(canvas: _Canvas, arms) -> np.ndarray:
    """Both arms down beside the trunk, label 0: skin, fat and muscle round the humerus above the elbow, round
    the radius and ulna below it. Returns the arms' (nj, ni) cross-section at the upper arm."""
    hu = canvas.subject.hu
    x, y, z = canvas.x[0], canvas.y[0], canvas.z[:, 0, 0]
    upper_slices = z >= arms.elbow_z
    footprint = np.zeros(canvas.label.shape[1:], bool)
    for side in (1, -1):
        cx = side * arms.centre_x
        distance = np.sqrt((x - np.float32(cx)) ** 2 + (y - np.float32(arms.centre_y)) ** 2)
        for upper in (True, False):
            k = np.nonzero(upper_slices if upper else ~upper_slices)[0]
            radius = arms.radius * (1.0 if upper else 0.82)
            inside = distance < radius
            if upper:
                footprint |= inside
            if k.size == 0 or not inside.any():
                continue
            values = np.where(distance > radius - 1.5, np.float32(hu["skin"]),
                              np.where(distance > radius - 1.5 - arms.fat, np.float32(hu["fat"]),
                                       np.float32(hu["muscle"])))
            bones = [(cx, arms.centre_y, arms.humerus)] if upper else [
                (cx - side * 4.0, arms.centre_y + 10.0, 0.6 * arms.humerus),
                (cx + side * 4.0, arms.centre_y - 10.0, 0.55 * arms.humerus)]
            for bx, by, br in bones:
                d = np.sqrt((x - np.float32(bx)) ** 2 + (y - np.float32(by)) ** 2)
                values = np.where(d < br, np.where(d > br - 3.5, np.float32(hu["cortical"]),
                                                   np.float32(hu.get("marrow", 0.0))), values)
            j, i = np.nonzero(inside)
            canvas.hu[k[:, None], j[None], i[None]] = values[j, i][None]
            canvas.label[k[:, None], j[None], i[None]] = 0
    return footprint


def _unit_std(sigma) -> float:
    """Standard deviation of unit white noise after a Gaussian filter of these sigmas (voxels)."""
    unit = 1.0
    for s in sigma:
        delta = np.zeros(65)
        delta[32] = 1.0
        unit *= np.sqrt((ndimage.gaussian_filter1d(delta, s) ** 2).sum()) if s > 0 else 1.0
    return unit


def _reconstruction_circle(grid: Grid):
    """Centre (R, A) and radius of the circle inscribed in the grid's cross-section, and the (nj, ni) mask of the
    voxels outside it."""
    x, y, _ = grid.world_axes()
    x, y = x[0], y[0]
    centre = np.array([x.mean(), y.mean()])
    radius = 0.5 * min(np.ptp(x), np.ptp(y))
    return centre, radius, (x - centre[0]) ** 2 + (y - centre[1]) ** 2 > radius ** 2


def _body_cut(subject: AbdomenSubject, acquisition: CTAcquisition, grid: Grid) -> bool:
    """Whether the trunk or the arms reach outside the reconstruction circle (checked on a 2 mm plane around the
    patient, since the parts cut off may lie outside the grid too)."""
    p = np.arange(-700.0, 700.0, 2.0, dtype=np.float32)
    px, py = p[None, :], p[:, None]
    body = subject.trunk.level(px, py) < 1.0
    arms = acquisition.arms
    if arms is not None:
        body |= np.hypot(np.abs(px) - np.float32(arms.centre_x), py - np.float32(arms.centre_y)) < arms.radius
    s, (tx, ty) = acquisition.anatomy.body_scale, acquisition.shift_mm
    centre, radius, _ = _reconstruction_circle(grid)
    outside = (s * px + tx - centre[0]) ** 2 + (s * py + ty - centre[1]) ** 2 > radius ** 2
    return bool((body & outside).any())


def _acquire(canvas: _Canvas, grid: Grid, acquisition: CTAcquisition, rng: np.random.Generator) -> np.ndarray:
    """Kernel PSF (in-plane from the drawn FWHM, through-plane from the slice thickness), correlated noise of the
    drawn SD in the image, and the reconstruction circle of the drawn field of view."""
    spacing = np.asarray(grid.spacing)  # i, j, k
    psf_mm = acquisition.psf_fwhm_mm / 2.3548
    in_plane = np.sqrt((psf_mm / spacing[:2]) ** 2 + 0.35 ** 2)  # plus a little against point-sampling aliasing
    through = np.sqrt((acquisition.thickness_mm / 2.3548 / spacing[2]) ** 2 + 0.2 ** 2)
    image = ndimage.gaussian_filter(canvas.hu, (through, in_plane[1], in_plane[0]), mode="nearest")
    if acquisition.noise_hu > 0:
        noise = rng.standard_normal(grid.array_shape, dtype=np.float32)
        sigma = (0.3, acquisition.noise_corr_mm / spacing[1], acquisition.noise_corr_mm / spacing[0])
        noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
        noise *= np.float32(acquisition.noise_hu / _unit_std(sigma))
        image += noise
    image[:, _reconstruction_circle(grid)[2]] = AIR_OUTSIDE_SCAN
    np.clip(image, -1024.0, 3071.0, out=image)
    return np.rint(image, out=image)


def _psf_and_noise(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    grid = canvas.grid
    image = ndimage.gaussian_filter(canvas.hu, 0.45, mode="nearest")
    noise = rng.standard_normal(grid.array_shape, dtype=np.float32)
    # Filtered back projection leaves noise correlated in-plane; normalise the filtered noise back to unit std.
    sigma = (0.3, 0.7, 0.7)
    noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    unit = 1.0
    for s in sigma:
        delta = np.zeros(33)
        delta[16] = 1.0
        unit *= np.sqrt((ndimage.gaussian_filter1d(delta, s) ** 2).sum())
    voxel_mm3 = float(np.prod(grid.spacing))
    noise *= np.float32(canvas.subject.noise_hu / unit * np.sqrt(_REFERENCE_VOXEL_MM3 / voxel_mm3))
    image += noise
    # Outside the reconstruction circle scanners store a fixed padding value.
    x, y = canvas.x[0], canvas.y[0]
    centre = np.array([x.mean(), y.mean()])
    radius = 0.5 * min(np.ptp(x), np.ptp(y))
    outside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 > radius ** 2
    image[:, outside] = AIR_OUTSIDE_SCAN
    np.clip(image, -1024.0, 3071.0, out=image)
    return np.rint(image, out=image)


def _paint_inside(canvas: _Canvas):
    _paint_trunk(canvas)
    _paint_thorax(canvas)
    _paint_bowel(canvas)
    _paint_muscles(canvas)
    _paint_organs(canvas)
    paint_lesions(canvas, BTCV_LABELS)
    paint_pelvis(canvas)
    _paint_spine(canvas)
    _paint_ribs(canvas)


def render_abdomen(subject: AbdomenSubject, grid: Grid, acquisition: CTAcquisition | None = None) -> CTPhantom:
    """The subject on grid; with an acquisition, the subject should come from `acquired_subject` and grid from
    `acquisition.grid` (any shape or spacing works)."""
    if acquisition is None:  # the fixed profile
        canvas = _Canvas(grid, subject)
        _paint_table(canvas)
        _paint_inside(canvas)
        image = _psf_and_noise(canvas, np.random.default_rng([subject.seed, 1]))
        info = {"seed": subject.seed, "shape": list(grid.shape), "spacing_mm": [round(s, 4) for s in grid.spacing],
                "enhancement": round(subject.enhancement, 3), "noise_hu": round(subject.noise_hu, 2)}
        return CTPhantom(image, canvas.label, grid.ijk_to_ras.copy(), info)
    canvas = _Canvas(acquisition.patient_grid(grid), subject)
    if acquisition.table:
        _paint_table(canvas)
    arms_visible = False
    if acquisition.arms is not None:
        footprint = _paint_arms(canvas, acquisition.arms)
        arms_visible = bool((footprint & ~_reconstruction_circle(grid)[2]).any())
    _paint_inside(canvas)
    image = _acquire(canvas, grid, acquisition, np.random.default_rng([subject.seed, 1, 1]))
    info = {"seed": subject.seed, "shape": list(grid.shape), "spacing_mm": [round(s, 4) for s in grid.spacing],
            "enhancement": acquisition.info()["enhancement"], "noise_hu": round(acquisition.noise_hu, 2),
            "truncated": _body_cut(subject, acquisition, grid), "arms_visible": arms_visible,
            "acquisition": acquisition.info()}
    return CTPhantom(image, canvas.label, grid.ijk_to_ras.copy(), info)


def acquired_subject(seed: int, profile: str) -> tuple[AbdomenSubject, CTAcquisition]:
    """The patient of seed with its anatomy variation and drawn tissue HU, and its acquisition under profile
    ('train' or 'shifted'). The anatomy variation is the same under both profiles."""
    anatomy = draw_ct_anatomy(seed)
    shaped = vary_abdomen(draw_abdomen(seed), anatomy.fat_extra_mm, anatomy.organ_scale,
                          min_fat_mm=CT_ANATOMY["min_fat_mm"])
    acquisition = draw_ct_acquisition(seed, profile, shaped.trunk.half_width, FIELD_CENTRE_RAS)
    return replace(shaped, hu=dict(acquisition.hu), texture_hu=dict(acquisition.texture_hu)), acquisition


def check_pelvis_profile(profile: str) -> None:
    """Abdomen-pelvis phantoms extend a drawn field; the fixed profile has none to extend."""
    if profile == "fixed":
        from MedDiffusionExtension.errors import InputError
        raise InputError("abdomen-pelvis phantoms need a randomized acquisition: pass --acquisition train or shifted")


def simulate_ct(seed: int, shape=None, spacing=None, enhancement: float | None = None,
                acquisition: str | CTAcquisition = "fixed", oral_contrast_hu: float | None = None,
                pelvis: bool = False, lesions: bool = False) -> CTPhantom:
    """One case. acquisition 'fixed' (default): shape (NIfTI order) and spacing default to 512 x 512 x 100 voxels
    of 0.8 x 0.8 x 2.5 mm and enhancement (0 native, 1 portal venous) is drawn per case when None. 'train' or
    'shifted' (or a CTAcquisition, e.g. a drawn one with fields replaced): the acquisition decides grid, phase and
    kernel; shape and spacing, when given, force the grid (see CTAcquisition.grid); enhancement is ignored.
    oral_contrast_hu: positive oral contrast, the fluid in the stomach, duodenum and small bowel at this HU (the
    same case otherwise; no profile draws it). pelvis: an abdomen-pelvis scan (ct_pelvis; randomized profiles
    only): the same patient with the pelvis drawn below, the field extended down past the symphysis. lesions: the
    same patient with focal lesions in the liver, kidneys or spleen (ct_lesions; labels unchanged)."""
    if isinstance(acquisition, str) and check_profile(acquisition) == "fixed":
        if pelvis:
            check_pelvis_profile(acquisition)
        subject, grid, acquisition = draw_abdomen(seed, enhancement), btcv_grid(shape, spacing), None
    else:
        if isinstance(acquisition, str):
            subject, acquisition = acquired_subject(seed, acquisition)
        else:
            subject = vary_abdomen(draw_abdomen(seed), acquisition.anatomy.fat_extra_mm,
                                   acquisition.anatomy.organ_scale, acquisition.hu, acquisition.texture_hu,
                                   CT_ANATOMY["min_fat_mm"])
        if pelvis:
            subject = with_pelvis(subject)
            acquisition = reach_down_to_pelvis(acquisition, subject.pelvis.symphysis_bottom_z, seed)
        grid = acquisition.grid(shape, spacing)
    if oral_contrast_hu is not None:
        subject = replace(subject, hu={**subject.hu, ORAL_CONTRAST_KEY: float(oral_contrast_hu)})
    if lesions:
        subject = with_lesions(subject)
    phantom = render_abdomen(subject, grid, acquisition)
    if oral_contrast_hu is not None:
        phantom.info["oral_contrast_hu"] = float(oral_contrast_hu)
    if subject.pelvis is not None:
        phantom.info["pelvis"] = subject.pelvis.landmarks()
    if subject.lesions:
        phantom.info["lesions"] = [lesion.summary() for lesion in subject.lesions]
    return phantom


def generate_ct_case(seed: int, shape=None, spacing=None, acquisition: str = "fixed"
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'image', 'label'} -> (array in (k, j, i) order, 4x4 ijk-to-RAS)."""
    phantom = simulate_ct(seed, shape, spacing, acquisition=acquisition)
    return {"image": (phantom.image, phantom.ijk_to_ras), "label": (phantom.label, phantom.ijk_to_ras)}
