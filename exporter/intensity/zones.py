"""From a node's labels to its grid zone and a static intensity for the main cloud regions.

The cloud comes from the node's `spec.providerID` (`aws://`, `gce://`, `azure://`) or from
labels the managed services set (`eks.amazonaws.com/...`, `cloud.google.com/...`,
`kubernetes.azure.com/...`); the region from `topology.kubernetes.io/region`. Zones are
Electricity Maps zone codes. Every value's source is in the table of docs/carbon.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.carbon import Intensity

REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
PROVIDER_ID_SCHEMES = {"aws": "aws", "gce": "gcp", "azure": "azure"}
LABEL_PREFIXES = (
    ("eks.amazonaws.com/", "aws"),
    ("alpha.eksctl.io/", "aws"),
    ("karpenter.k8s.aws/", "aws"),
    ("cloud.google.com/", "gcp"),
    ("kubernetes.azure.com/", "azure"),
)

CCF_AWS = ("Cloud Carbon Footprint, cloud-carbon-coefficients "
           "data/grid-emissions-factors-aws.csv")
CCF_AZURE = ("Cloud Carbon Footprint, cloud-carbon-coefficients "
             "data/grid-emissions-factors-azure.csv")
GOOGLE_2024 = ("Google Cloud region-carbon-info data/yearly/2024.csv "
               "(grid carbon intensity)")


@dataclass(frozen=True, slots=True)
class ZoneDefault:
    """A cloud region's grid zone and the static intensity used when no live value is."""

    cloud: str
    region: str
    zone: str
    grams_per_kwh: float
    source: str

    def intensity(self) -> Intensity:
        return Intensity(self.grams_per_kwh, self.zone, "static")


def _rows(cloud: str, source: str,
          rows: tuple[tuple[str, str, float, str], ...]) -> dict[tuple[str, str], ZoneDefault]:
    return {(cloud, region): ZoneDefault(cloud, region, zone, grams, f"{source} ({note})")
            for region, zone, grams, note in rows}


# gCO2e/kWh; CCF gives metric tons per kWh (x 1e6).
REGIONS: Mapping[tuple[str, str], ZoneDefault] = {
    **_rows("aws", CCF_AWS, (
        ("us-east-1", "US-MIDA-PJM", 415.755, "EPA eGRID, SERC"),
        ("us-east-2", "US-MIDA-PJM", 440.187, "EPA eGRID, RFC"),
        ("us-west-1", "US-CAL-CISO", 350.861, "EPA eGRID, WECC"),
        ("us-west-2", "US-NW-BPAT", 350.861, "EPA eGRID, WECC"),
        ("eu-west-1", "IE", 316.0, "EEA"),
        ("eu-west-2", "GB", 228.0, "EEA"),
        ("eu-central-1", "DE", 338.0, "EEA"),
        ("eu-west-3", "FR", 52.0, "EEA"),
        ("eu-north-1", "SE-SE3", 8.0, "EEA"),
        ("ap-southeast-1", "SG", 408.5, "EMA Singapore"),
    )),
    **_rows("gcp", GOOGLE_2024, (
        ("us-central1", "US-MIDW-MISO", 412.72, "Iowa"),
        ("us-east1", "US-CAR-SC", 575.77, "South Carolina"),
        ("us-east4", "US-MIDA-PJM", 323.05, "Northern Virginia"),
        ("us-west1", "US-NW-BPAT", 79.23, "Oregon"),
        ("europe-west1", "BE", 103.37, "Belgium"),
        ("europe-west3", "DE", 275.82, "Frankfurt"),
        ("europe-west4", "NL", 208.81, "Eemshaven"),
        ("europe-north1", "FI", 39.32, "Finland"),
        ("asia-southeast1", "SG", 366.85, "Singapore"),
    )),
    **_rows("azure", CCF_AZURE, (
        ("eastus", "US-MIDA-PJM", 415.755, "EPA eGRID, SERC"),
        ("eastus2", "US-MIDA-PJM", 415.755, "EPA eGRID, SERC"),
        ("centralus", "US-MIDW-MISO", 472.23, "EPA eGRID, MRO"),
        ("westus2", "US-NW-GCPD", 350.861, "EPA eGRID, WECC"),
        ("northeurope", "IE", 316.0, "EEA"),
        ("westeurope", "NL", 390.0, "EEA"),
        ("uksouth", "GB", 228.0, "EEA"),
        ("francecentral", "FR", 67.0, "EEA"),
    )),
}


def cloud_of(labels: Mapping[str, str], provider_id: str = "") -> str | None:
    """`aws`, `gcp` or `azure` from the providerID scheme, else from managed-service labels."""
    scheme, sep, _ = provider_id.partition("://")
    if sep and scheme.lower() in PROVIDER_ID_SCHEMES:
        return PROVIDER_ID_SCHEMES[scheme.lower()]
    for key in labels:
        for prefix, cloud in LABEL_PREFIXES:
            if key.startswith(prefix):
                return cloud
    return None


def region_of(labels: Mapping[str, str]) -> str | None:
    for key in REGION_LABELS:
        value = labels.get(key, "").strip().lower()
        if value:
            return value
    return None


def zone_for(labels: Mapping[str, str], provider_id: str = "") -> ZoneDefault | None:
    """The zone and static default of a node's region; None when the region is not in the
    table. Without a known cloud, a region name that only one cloud uses still matches."""
    region = region_of(labels)
    if region is None:
        return None
    cloud = cloud_of(labels, provider_id)
    if cloud is not None:
        return REGIONS.get((cloud, region))
    matches = [row for (_, name), row in REGIONS.items() if name == region]
    return matches[0] if len(matches) == 1 else None
