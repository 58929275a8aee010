"""A random abdomen for the CT phantom: trunk, spine, ribs, diaphragm, organs and vessels, in patient millimetres.

Patient RAS coordinates with the origin on the midline at the centre of the trunk's cross-section, z = 0 near the
renal hila (L1/L2). Landmarks follow textbook anatomy: liver under the right hemidiaphragm, spleen against the
left posterolateral wall, kidneys beside the spine (the right one lower), aorta left-anterior of the vertebral
bodies with the IVC to its right, pancreas draped across both from the duodenal C-loop to the splenic hilum,
stomach in the left upper quadrant below the left dome with gas where it is anterior (patient supine).
Drawing is separate from rendering, so one seed gives the same patient on any grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from scipy.spatial.transform import Rotation

from .fields import SmoothField, random_rotation
from .shapes import Ellipsoid, Tube, smooth_tube

if TYPE_CHECKING:
    from .ct_pelvis import Pelvis

# (native, portal venous) HU; the case's contrast phase interpolates between them.
HU = {
    "fat": (-100, -100), "muscle": (50, 60), "liver": (60, 110), "spleen": (48, 120), "kidney_cortex": (32, 185),
    "kidney_medulla": (30, 115), "renal_sinus": (-70, -70), "gallbladder": (10, 10), "wall": (40, 90),
    "fluid": (15, 15), "aorta": (42, 170), "ivc": (40, 125), "portal": (42, 165), "pancreas": (42, 100),
    "adrenal": (30, 60), "esophagus": (40, 70), "heart": (40, 140), "cancellous": (250, 250), "cortical": (850, 850),
    "cartilage": (150, 150), "lung": (-860, -860), "gas": (-1000, -1000), "canal": (20, 20), "stool": (-20, -20),
    "skin": (35, 35),
}


@dataclass(frozen=True)
class Solid:
    """A union of shapes whose surface a smooth random field pushes in and out by `roughness` (relative)."""

    shapes: tuple
    roughness: float = 0.0
    field: SmoothField | None = None

    def level(self, x, y, z) -> np.ndarray:
        level = None
        for shape in self.shapes:
            part = shape.level(x, y, z)
            level = part if level is None else np.minimum(level, part, out=level)
        if self.field is not None and self.roughness:
            level += np.float32(self.roughness) * self.field(x, y, z)
        return level

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [shape.bounds(margin=2.0) for shape in self.shapes]
        low, high = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
        grow = (high - low) * 1.5 * self.roughness
        return low - grow, high + grow


@dataclass(frozen=True)
class Trunk:
    """Cross-section of the trunk: outer skin, subcutaneous fat, muscle wall, abdominal cavity (same at all z)."""

    half_width: float
    front: float  # anterior half-depth
    back: float  # posterior half-depth
    fat: tuple[float, float, float]  # subcutaneous fat: anterior, lateral, posterior
    muscle: tuple[float, float, float]  # muscle wall: rectus in front, the three flank layers, back muscles

    def level(self, x, y, inset=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Superellipse level (1 on the outline) of the trunk shrunk by inset (anterior, lateral, posterior) mm;
        the back is flatter than the front, as a body lying on a table is."""
        a = self.half_width - inset[1]
        depth = np.where(y > 0, self.front - inset[0], self.back - inset[2]).astype(np.float32)
        power = np.where(y > 0, 2.0, 2.6).astype(np.float32)
        return (np.abs(x / np.float32(a)) ** power + np.abs(y / depth) ** power) ** (1.0 / power)

    def cavity(self) -> tuple[float, float, float]:
        return tuple(f + m for f, m in zip(self.fat, self.muscle))

    def cavity_extent(self) -> tuple[float, float, float]:
        """Half-width, anterior and posterior reach of the abdominal cavity (mm)."""
        inset = self.cavity()
        return self.half_width - inset[1], self.front - inset[0], self.back - inset[2]


@dataclass(frozen=True)
class Spine:
    body_y: float  # centre of the vertebral bodies (A, mm)
    body_radii: tuple[float, float]  # lateral, anteroposterior
    level_mm: float  # one vertebra plus one disc
    disc_mm: float
    phase_mm: float
    canal_radius: float

    @property
    def canal_y(self) -> float:
        return self.body_y - self.body_radii[1] - self.canal_radius - 1.0

    @property
    def front(self) -> float:
        return self.body_y + self.body_radii[1]


@dataclass(frozen=True)
class Diaphragm:
    right_top: float
    left_top: float
    curvature: float  # mm of descent per mm^2 away from each dome's peak
    peak_y: float
    dome_x: float

    def height(self, x, y) -> np.ndarray:
        # The domes fall steeply behind into the deep posterior costophrenic recesses and gently in front.
        behind = np.where(y < self.peak_y, np.float32(1.6), np.float32(0.45))
        lateral = np.float32(self.curvature) * behind * (y - np.float32(self.peak_y)) ** 2
        right = np.float32(self.right_top) - np.float32(self.curvature) * (x - np.float32(self.dome_x)) ** 2 - lateral
        left = np.float32(self.left_top) - np.float32(self.curvature) * (x + np.float32(self.dome_x)) ** 2 - lateral
        return np.maximum(right, left)


@dataclass(frozen=True)
class Rib:
    side: int  # +1 right, -1 left
    head_z: float  # height where it leaves the spine
    drop_mm: float  # how far it descends by the end of its bony part
    end_angle: float  # radians from the posterior midline where the bone ends
    cartilage_angle: float  # where its costal cartilage ends (>= end_angle)
    half_thickness: float
    half_height: float


@dataclass(frozen=True)
class AbdomenSubject:
    seed: int
    enhancement: float  # 0 native, 1 portal venous
    trunk: Trunk
    spine: Spine
    diaphragm: Diaphragm
    ribs: tuple[Rib, ...]
    organs: dict[str, Solid]
    hu: dict[str, float]
    stomach_gas_depth_mm: float
    noise_hu: float
    fields: dict[str, SmoothField] = field(default_factory=dict)
    texture_hu: dict[str, float] = field(default_factory=dict)  # organ texture amplitudes overriding the defaults
    pelvis: Pelvis | None = None  # ct_pelvis.with_pelvis adds one (abdomen-pelvis scans)
    lesions: tuple = ()  # ct_lesions.Lesion each; ct_lesions.with_lesions draws them


def _u(rng, low, high):
    return float(rng.uniform(low, high))


def _ellipsoid(rng, centre, radii, max_turn_deg, turn=None):
    rotation = random_rotation(rng, max_turn_deg)
    if turn is not None:
        rotation = rotation @ turn
    return Ellipsoid(np.asarray(centre, float), np.asarray(radii, float), rotation)


def _turn(axis: str, degrees: float) -> np.ndarray:
    return Rotation.from_euler(axis, degrees, degrees=True).as_matrix()


def draw_abdomen(seed: int, enhancement: float | None = None) -> AbdomenSubject:
    """The patient for seed; enhancement (0 native .. 1 portal venous) is drawn unless given, and giving it
    changes nothing else about the patient."""
    rng = np.random.default_rng([seed, 0])
    # BTCV is portal venous; some cases are native or early (partly enhanced) scans.
    drawn = _u(rng, 0.6, 1.0) if rng.uniform() < 0.8 else _u(rng, 0.0, 0.3)
    contrast = drawn if enhancement is None else float(np.clip(enhancement, 0.0, 1.0))
    hu = {name: native + contrast * (venous - native) + rng.normal(0, 3.0) for name, (native, venous) in HU.items()}
    for fixed in ("gas", "fat", "cortical", "cancellous", "lung"):
        hu[fixed] = HU[fixed][0] + rng.normal(0, 10.0 if fixed in ("cortical", "cancellous") else 3.0)
    trunk, spine, diaphragm, ribs = _draw_frame(rng)
    organs = _Organs(rng, trunk, spine, diaphragm).draw()
    fields = {name: SmoothField(rng, wavelength, n_waves=10) for name, wavelength in
              (("texture", 12.0), ("bone", 6.0), ("bowel", 9.0), ("bubbles", 14.0), ("lung", 5.0))}
    return AbdomenSubject(seed, contrast, trunk, spine, diaphragm, ribs, organs, hu,
                          stomach_gas_depth_mm=_u(rng, 8, 35), noise_hu=_u(rng, 9.0, 18.0), fields=fields)


def _scaled_shape(shape, factor: float, about: np.ndarray):
    if isinstance(shape, Ellipsoid):
        return Ellipsoid(about + factor * (shape.centre - about), shape.radii * factor, shape.rotation)
    return Tube(about + factor * (shape.points - about), shape.radii * factor)


def scale_solid(solid: Solid, factor: float) -> Solid:
    """The solid grown or shrunk by factor about the centre of its bounding box (roughness is relative)."""
    low, high = (np.min([s.bounds()[0] for s in solid.shapes], axis=0),
                 np.max([s.bounds()[1] for s in solid.shapes], axis=0))
    about = (low + high) / 2.0
    return Solid(tuple(_scaled_shape(s, factor, about) for s in solid.shapes), solid.roughness, solid.field)


def vary_abdomen(subject: AbdomenSubject, fat_extra_mm=(0.0, 0.0, 0.0), organ_scale=None, hu=None,
                 texture_hu=None, min_fat_mm: float = 5.0) -> AbdomenSubject:
    """The same patient with more or less subcutaneous fat (anterior, lateral, posterior mm; the muscle wall, the
    cavity and everything inside stay put), some organs scaled about their centres, and other tissue HU."""
    trunk = subject.trunk
    fat = tuple(max(f + d, min_fat_mm) for f, d in zip(trunk.fat, fat_extra_mm))
    grow = [new - old for new, old in zip(fat, trunk.fat)]
    trunk = Trunk(half_width=trunk.half_width + grow[1], front=trunk.front + grow[0], back=trunk.back + grow[2],
                  fat=fat, muscle=trunk.muscle)
    organs = dict(subject.organs)
    for name, factor in (organ_scale or {}).items():
        organs[name] = scale_solid(organs[name], factor)
    return replace(subject, trunk=trunk, organs=organs, hu=dict(hu) if hu is not None else subject.hu,
                   texture_hu=dict(texture_hu or {}))


def _draw_frame(rng) -> tuple[Trunk, Spine, Diaphragm, tuple[Rib, ...]]:
    trunk = Trunk(half_width=_u(rng, 135, 170), front=_u(rng, 95, 125), back=_u(rng, 95, 112),
                  fat=(_u(rng, 12, 40), _u(rng, 10, 32), _u(rng, 8, 28)),
                  muscle=(_u(rng, 7, 11), _u(rng, 11, 18), _u(rng, 14, 20)))
    spine = Spine(body_y=-trunk.back + trunk.fat[2] + _u(rng, 58, 66),
                  body_radii=(_u(rng, 20, 24), _u(rng, 15, 18)), level_mm=_u(rng, 31, 36),
                  disc_mm=_u(rng, 7, 10), phase_mm=_u(rng, 0, 36), canal_radius=_u(rng, 8, 10))
    right_top = _u(rng, 118, 140)
    diaphragm = Diaphragm(right_top=right_top, left_top=right_top - _u(rng, 8, 20),
                          curvature=_u(rng, 0.0045, 0.007), peak_y=_u(rng, 0, 25),
                          dome_x=0.45 * trunk.cavity_extent()[0])
    ribs = []
    lowest_head = _u(rng, 28, 42)
    for side in (1, -1):
        for number in range(12, 4, -1):  # ribs 12 up to 5; higher ones lie above any field of view used here
            floating = number >= 11
            ribs.append(Rib(side=side, head_z=lowest_head + (12 - number) * spine.level_mm * _u(rng, 0.85, 0.95),
                            drop_mm=_u(rng, 55, 80) * (0.6 if floating else 1.0),
                            end_angle=np.deg2rad(_u(rng, 95, 115) if floating else _u(rng, 125, 145)),
                            cartilage_angle=np.deg2rad(_u(rng, 95, 115) if floating else _u(rng, 150, 165)),
                            half_thickness=_u(rng, 2.5, 3.5), half_height=_u(rng, 5.5, 7.5)))
    return trunk, spine, diaphragm, tuple(ribs)


class _Organs:
    """Draws the organs in a fixed order (the random stream depends on it), each placed from landmarks drawn
    before it: vessels first, then the solid organs, the portal system and pancreas, the gut, the heart."""

    TOP = 260.0  # tubes that leave the field of view upwards end here

    def __init__(self, rng, trunk: Trunk, spine: Spine, diaphragm: Diaphragm):
        self.rng, self.spine, self.diaphragm = rng, spine, diaphragm
        self.half_width, self.front, _ = trunk.cavity_extent()
        self.organs: dict[str, Solid] = {}

    def u(self, low, high) -> float:
        return _u(self.rng, low, high)

    def roughness_field(self, wavelength_mm: float) -> SmoothField:
        return SmoothField(self.rng, wavelength_mm, n_waves=10)

    def draw(self) -> dict[str, Solid]:
        self.great_vessels()
        self.liver_and_gallbladder()
        self.spleen_kidneys_adrenals()
        self.portal_system_and_pancreas()
        self.gut()
        self.heart()
        return self.organs

    def great_vessels(self):
        u, spine, top = self.u, self.spine, self.TOP
        self.aorta_x, self.aorta_r = -u(10, 18), u(9, 12.5)
        self.aorta_y = spine.front + self.aorta_r + u(1, 4)
        x, y, r = self.aorta_x, self.aorta_y, self.aorta_r
        self.organs["aorta"] = Solid((smooth_tube([[x + u(-4, 4), y + u(-3, 3), top], [x, y, 40.0],
                                                   [x + u(-4, 4), y + u(-2, 4), -200.0]], [r * 1.05, r, r * 0.9]),))
        self.ivc_x, self.ivc_y = u(18, 28), spine.front + u(8, 14)
        self.hepatic_z = self.diaphragm.right_top - u(25, 40)
        x, y = self.ivc_x, self.ivc_y
        self.organs["ivc"] = Solid((smooth_tube([[x - 3, y + 22, top], [x, y + 12, self.hepatic_z], [x, y, 0.0],
                                                 [x - 4, y - 2, -200.0]], [13, 12, u(9, 12), 10]),))

    def liver_and_gallbladder(self):
        u, rng = self.u, self.rng
        # The right lobe's long axis leans so that its dome spans the right upper quadrant while its tip hangs
        # down laterally.
        centre = np.array([self.half_width - u(40, 55), u(-15, 5), u(65, 85)])
        right_lobe = _ellipsoid(rng, centre, [u(60, 78), u(80, 100), u(75, 92)], 6, _turn("y", -u(18, 28)))
        left_lobe = _ellipsoid(rng, [u(-20, 0), 0.55 * self.front, centre[2] + u(10, 25)],
                               [u(45, 65), u(22, 32), u(28, 40)], 8)
        caudate = _ellipsoid(rng, [self.ivc_x - u(5, 15), self.ivc_y + u(22, 32), self.hepatic_z - u(15, 30)],
                             [u(18, 26), u(16, 22), u(25, 35)], 10)
        self.organs["liver"] = Solid((right_lobe, left_lobe, caudate), 0.07, self.roughness_field(60.0))
        self.liver_bottom = centre[2] - right_lobe.radii[2] * 0.8
        gallbladder = _ellipsoid(rng, [u(30, 50), self.front - u(30, 45), self.liver_bottom + u(5, 25)],
                                 [u(12, 18), u(15, 22), u(28, 42)], 10, _turn("x", 40))
        self.organs["gallbladder"] = Solid((gallbladder,), 0.04, self.roughness_field(40.0))

    def spleen_kidneys_adrenals(self):
        u, rng, spine = self.u, self.rng, self.spine
        self.spleen_centre = np.array([-(self.half_width - u(28, 38)), spine.body_y + u(-15, 5), u(45, 75)])
        spleen = _ellipsoid(rng, self.spleen_centre, [u(20, 28), u(45, 60), u(45, 60)], 8, _turn("z", -u(35, 55)))
        self.organs["spleen"] = Solid((spleen,), 0.06, self.roughness_field(50.0))
        self.kidneys = {}
        right_z = u(-15, 5)
        for name, side, z in (("right_kidney", 1, right_z), ("left_kidney", -1, right_z + u(8, 20))):
            centre = [side * u(60, 72), spine.body_y - u(0, 10), z]
            turn = _turn("z", side * u(25, 40)) @ _turn("y", -side * u(10, 20))  # upper pole medial
            self.kidneys[name] = _ellipsoid(rng, centre, [u(24, 30), u(20, 26), u(48, 60)], 5, turn)
            self.organs[name] = Solid((self.kidneys[name],), 0.03, self.roughness_field(40.0))
        for name, kidney, side in (("right_adrenal", self.kidneys["right_kidney"], 1),
                                   ("left_adrenal", self.kidneys["left_kidney"], -1)):
            top_of_kidney = kidney.centre[2] + kidney.radii[2] * 0.9
            centre = [side * u(28, 38), spine.body_y + u(3, 14), top_of_kidney + u(-4, 8)]
            adrenal = _ellipsoid(rng, centre, [u(3, 4.5), u(11, 16), u(13, 18)], 10, _turn("z", side * u(30, 60)))
            self.organs[name] = Solid((adrenal,), 0.05, self.roughness_field(20.0))

    def portal_system_and_pancreas(self):
        u, organs = self.u, self.organs
        aorta_x, aorta_y, ivc_x, ivc_y = self.aorta_x, self.aorta_y, self.ivc_x, self.ivc_y
        confluence = np.array([u(0, 8), aorta_y + u(24, 32), u(18, 30)])
        hilum = confluence + [u(28, 40), u(8, 15), u(18, 28)]
        organs["portal_vein"] = Solid((smooth_tube([confluence, (confluence + hilum) / 2 + [0, 3, 0], hilum],
                                                   [7.5, 7.0, 6.5]),))
        splenic_hilum = self.spleen_centre + [u(18, 25), u(8, 18), u(-12, 0)]
        organs["splenic_vein"] = Solid((smooth_tube(
            [confluence, [-u(25, 35), aorta_y + u(14, 22), confluence[2] + u(4, 10)], splenic_hilum],
            [5.5, 4.8, 4.5]),))
        organs["smv"] = Solid((smooth_tube([confluence, confluence + [u(3, 8), u(4, 10), -60]], [6.0, 5.0]),))
        organs["intrahepatic_portal"] = Solid((
            smooth_tube([hilum, hilum + [u(25, 40), u(-15, 0), u(6, 15)]], [6.0, 3.5]),
            smooth_tube([hilum, hilum + [-u(30, 45), u(15, 30), u(8, 16)]], [5.0, 3.0])))
        hepatic_top = np.array([ivc_x - 2, ivc_y + 18, self.hepatic_z + 8])
        branches = ([u(55, 75), u(-20, 0), -u(25, 40)], [u(10, 25), u(35, 50), -u(30, 45)],
                    [-u(25, 40), u(40, 55), -u(20, 35)])
        organs["hepatic_veins"] = Solid(tuple(smooth_tube([hepatic_top, hepatic_top + b], [5.5, 2.5])
                                              for b in branches))
        left, right = self.kidneys["left_kidney"].centre, self.kidneys["right_kidney"].centre
        organs["renal_veins"] = Solid((
            smooth_tube([left + [14, 8, 0], [aorta_x, aorta_y + self.aorta_r + 5, left[2] - 4],
                         [ivc_x, ivc_y, left[2] - 8]], [5.0, 4.0, 5.5]),
            smooth_tube([right + [-14, 8, 0], [ivc_x, ivc_y, right[2] + 4]], [5.0, 5.5])))
        organs["sma"] = Solid((smooth_tube([[aorta_x, aorta_y, confluence[2] + 8],
                                            [aorta_x + 3, aorta_y + 22, confluence[2] - 12],
                                            [aorta_x + 8, aorta_y + 32, -90]], [3.8, 3.5, 3.0]),
                               smooth_tube([[aorta_x, aorta_y, confluence[2] + 22],
                                            [aorta_x + 2, aorta_y + 25, confluence[2] + 24]], [3.8, 3.5])))
        # Head in the duodenal C-loop, neck in front of the portal confluence, tail at the splenic hilum.
        self.pancreas_head = np.array([u(28, 40), aorta_y + u(18, 28), confluence[2] - u(12, 22)])
        points = [self.pancreas_head, confluence + [0, 12, 0],
                  [-u(25, 35), aorta_y + u(25, 35), confluence[2] + u(5, 10)],
                  splenic_hilum + [u(6, 12), u(10, 18), u(-4, 4)]]
        organs["pancreas"] = Solid((smooth_tube(points, [u(14, 18), 9.0, u(10, 12), 9.0]),), 0.12,
                                   self.roughness_field(18.0))

    def gut(self):
        u, organs, spine, front = self.u, self.organs, self.spine, self.front
        left_top, aorta_x, aorta_y = self.diaphragm.left_top, self.aorta_x, self.aorta_y
        cardia = [-u(30, 40), spine.front + u(25, 35), left_top - u(18, 28)]
        stomach = [cardia, [-u(45, 62), spine.front + u(35, 50), left_top - u(25, 35)],
                   [-u(45, 65), front * u(0.15, 0.35), left_top - u(60, 75)],
                   [-u(0, 15), front - u(28, 40), u(10, 28)], [u(15, 28), front - u(35, 50), u(12, 26)]]
        organs["stomach"] = Solid((smooth_tube(stomach, [u(20, 28), u(30, 42), u(28, 38), u(15, 22), 10.0],
                                               segments=20),), 0.06, self.roughness_field(45.0))
        organs["esophagus"] = Solid((smooth_tube([[aorta_x + u(12, 20), aorta_y + u(10, 16), self.TOP],
                                                  [aorta_x + u(0, 8), aorta_y + u(15, 22), left_top],
                                                  np.asarray(cardia) + [4, 0, 8], cardia], [8.5, 8.5, 9.0, 12.0]),))
        pylorus, head = np.asarray(stomach[-1]), self.pancreas_head
        duodenum = [pylorus, pylorus + [u(15, 25), -u(25, 35), u(0, 8)],
                    [head[0] + u(18, 25), aorta_y + u(15, 25), head[2] - 5],
                    [head[0] + u(15, 22), aorta_y + u(15, 25), -u(30, 45)],
                    [aorta_x - u(10, 25), aorta_y + u(14, 20), -u(35, 50)]]
        organs["duodenum"] = Solid((smooth_tube(duodenum, [10, 11, 12, 12, 11], segments=20),), 0.05,
                                   self.roughness_field(30.0))
        colon_r = u(17, 26)
        side_x = self.half_width - colon_r - u(8, 18)
        colon = [[side_x, u(-25, 5), -220.0], [side_x, u(-10, 15), self.liver_bottom - u(15, 30)],
                 [u(-10, 20), front - colon_r - u(5, 12), self.liver_bottom - u(45, 75)],
                 [-side_x, u(-5, 20), self.spleen_centre[2] - u(15, 35)], [-side_x, u(-30, 0), -220.0]]
        organs["colon"] = Solid((smooth_tube(colon, [colon_r] * 5, segments=28),), 0.08, self.roughness_field(35.0))
        loops = []
        for _ in range(9):
            start = np.array([u(-75, 75), u(-5, front - 25), u(-200, -20)])
            loops.append(smooth_tube([start, start + self.rng.normal(0, 35, 3), start + self.rng.normal(0, 35, 3)],
                                     [u(10, 14)] * 3))
        organs["small_bowel"] = Solid(tuple(loops), 0.08, self.roughness_field(30.0))

    def heart(self):
        u = self.u
        centre_z = 0.5 * (self.diaphragm.right_top + self.diaphragm.left_top) + u(20, 40)
        self.organs["heart"] = Solid((_ellipsoid(self.rng, [-u(15, 35), self.front - u(45, 60), centre_z],
                                                 [u(55, 70), u(45, 55), u(50, 60)], 10),))
