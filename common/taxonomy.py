"""The built-in taxonomy of interest clusters the simulator draws from (docs/contracts.md "Inputs").

Real names with one-line descriptions, grouped by topic, so that prompts built from simulated logs
read like the paper's (cluster names an LLM can reason about), and so that the simulator has a
semantic structure to follow: clusters of one topic are close, and CROSS_TOPIC links topics that
share an audience. Names are unique across the whole taxonomy.
"""

from __future__ import annotations

from dataclasses import dataclass

_TOPICS: dict[str, list[tuple[str, str]]] = {
    "food": [
        ("sourdough baking", "Starters, long ferments and open-crumb loaves."),
        ("home espresso", "Grinders, dialing in shots and latte art at home."),
        ("fermentation projects", "Kimchi, kombucha, hot sauce and miso made in jars."),
        ("weeknight vegetarian cooking", "Quick meat-free dinners from pantry staples."),
        ("barbecue and smoking", "Low-and-slow brisket, ribs and smoker builds."),
        ("street food tours", "Night markets and food stalls around the world."),
        ("cake decorating", "Buttercream piping, fondant and showpiece cakes."),
        ("knife skills", "Sharpening, whetstones and fast precise cutting."),
        ("ramen from scratch", "Broths, tare, noodles and toppings made at home."),
        ("meal prep", "Cooking a week of lunches in one afternoon."),
        ("natural wine", "Low-intervention wines, producers and tastings."),
        ("cocktail mixology", "Classic recipes, syrups and bar technique."),
    ],
    "fitness": [
        ("trail running", "Off-road running, ultras, shoes and mountain routes."),
        ("marathon training", "Plans, pacing and race-day fueling for 42 km."),
        ("powerlifting", "Squat, bench and deadlift programming and meets."),
        ("calisthenics", "Bodyweight strength: levers, planches and pull-ups."),
        ("yoga flows", "Vinyasa sequences, mobility and breathwork."),
        ("road cycling", "Group rides, climbing and bike fitting."),
        ("bouldering", "Short hard climbs, gym setting and outdoor problems."),
        ("open water swimming", "Lakes, sea swims, wetsuits and cold water."),
        ("kettlebell training", "Swings, snatches and simple strength routines."),
        ("home gym builds", "Racks, plates and garage gym setups."),
        ("stretching and mobility", "Daily routines for hips, shoulders and back."),
        ("triathlon", "Swim-bike-run training and transitions."),
    ],
    "games": [
        ("retro game speedruns", "Record runs of classic console games and their tricks."),
        ("indie roguelikes", "Run-based indie games with permadeath."),
        ("competitive shooters", "Aim training, tactics and esports matches."),
        ("cozy farming games", "Relaxed crop, village and crafting games."),
        ("strategy board games", "Euro games, engine builders and heavy strategy."),
        ("tabletop roleplaying", "Dungeon masters, campaigns and character builds."),
        ("chess openings", "Opening theory, traps and grandmaster games."),
        ("fighting game combos", "Frame data, combos and tournament play."),
        ("open world RPGs", "Large fantasy worlds, quests and builds."),
        ("puzzle game design", "How clever puzzles are made and solved."),
        ("retro console repair", "Fixing, modding and recapping old consoles."),
        ("minecraft redstone", "Logic circuits and machines built in Minecraft."),
    ],
    "music": [
        ("synthesizer sound design", "Patches, oscillators and modular synths."),
        ("lofi beats", "Mellow instrumental hip-hop to study to."),
        ("jazz guitar", "Chord melody, standards and improvisation."),
        ("classical piano", "Repertoire, technique and famous recitals."),
        ("vinyl collecting", "Record hunting, pressings and turntables."),
        ("home studio recording", "Microphones, interfaces and mixing at home."),
        ("drum covers", "Drummers playing along to well-known songs."),
        ("music theory explained", "Harmony, scales and why songs work."),
        ("indie folk", "Acoustic songwriters and small-venue sessions."),
        ("electronic dance music", "House, techno and festival sets."),
        ("choir and a cappella", "Vocal harmony groups and arrangements."),
        ("guitar pedal building", "DIY effects pedals and circuit kits."),
    ],
    "outdoors": [
        ("ultralight backpacking", "Gear lists under five kilos and long trails."),
        ("wild camping", "Sleeping out in remote places, leave-no-trace."),
        ("birdwatching", "Identifying birds by sight and song."),
        ("foraging", "Wild mushrooms, herbs and berries, safely."),
        ("fly fishing", "Casting, flies and river trout."),
        ("van life", "Converted vans, road trips and living small."),
        ("mountaineering", "Alpine climbs, glaciers and high peaks."),
        ("kayaking", "Sea and river paddling trips."),
        ("astrophotography", "Photographing the night sky, stars and galaxies."),
        ("national park trips", "Itineraries and sights of famous parks."),
        ("bushcraft", "Fire lighting, shelters and knife work in the woods."),
        ("storm chasing", "Tracking severe weather and tornadoes."),
    ],
    "home": [
        ("houseplant care", "Watering, light and repotting indoor plants."),
        ("vegetable gardening", "Raised beds, seedlings and harvests."),
        ("tiny house living", "Small homes, clever storage and off-grid builds."),
        ("woodworking joinery", "Dovetails, mortises and hand-tool furniture."),
        ("home renovation", "Before-and-after projects and DIY fixes."),
        ("minimalist decluttering", "Owning less and organising what remains."),
        ("interior design on a budget", "Styling rooms cheaply with thrift finds."),
        ("smart home automation", "Sensors, hubs and automations around the house."),
        ("beekeeping", "Hives, honey harvests and colony health."),
        ("backyard chickens", "Coops, breeds and fresh eggs at home."),
        ("composting", "Turning kitchen and garden waste into soil."),
        ("pottery wheel throwing", "Centering clay, glazes and kiln firings."),
    ],
    "tech": [
        ("mechanical keyboards", "Switches, keycaps and custom keyboard builds."),
        ("home lab servers", "Self-hosting, racks and virtualisation at home."),
        ("python programming tips", "Idioms, libraries and small Python tricks."),
        ("machine learning explainers", "How neural networks and models work."),
        ("retro computing", "8-bit machines, restorations and old software."),
        ("3D printing", "Printers, slicers and useful printed parts."),
        ("drone flying", "FPV racing, cinematic shots and builds."),
        ("linux desktop customisation", "Window managers, themes and dotfiles."),
        ("electronics tinkering", "Arduino, soldering and small circuits."),
        ("cybersecurity stories", "Breaches, exploits and how they were found."),
        ("smartphone reviews", "New phones compared and tested."),
        ("PC building", "Choosing parts and assembling desktop computers."),
    ],
    "crafts": [
        ("knitting patterns", "Sweaters, socks and stitch techniques."),
        ("watercolor painting", "Washes, palettes and loose landscapes."),
        ("calligraphy", "Brush and pointed-pen lettering."),
        ("miniature painting", "Painting tabletop figures and dioramas."),
        ("leathercraft", "Wallets, belts and hand-stitched goods."),
        ("embroidery", "Hoop art, stitches and patterns."),
        ("origami", "Folded paper models from simple to complex."),
        ("bookbinding", "Sewing signatures and making journals by hand."),
        ("sewing your own clothes", "Patterns, fitting and garment making."),
        ("scale model kits", "Plastic kits of planes, tanks and ships."),
        ("digital illustration", "Drawing on tablets, brushes and workflows."),
        ("candle and soap making", "Waxes, scents and cold-process soap."),
    ],
    "science": [
        ("space exploration news", "Launches, probes and missions to other worlds."),
        ("dinosaur paleontology", "Fossils, digs and new species."),
        ("physics explained simply", "Big ideas of physics without the maths."),
        ("marine biology", "Ocean life, reefs and the deep sea."),
        ("geology and rocks", "Minerals, volcanoes and landforms."),
        ("human evolution", "Ancestors, migrations and ancient DNA."),
        ("mathematics puzzles", "Elegant problems, proofs and number curiosities."),
        ("chemistry experiments", "Reactions and demonstrations, done safely."),
        ("climate science", "How the climate works and how it is changing."),
        ("neuroscience of sleep", "What the brain does at night and why."),
        ("microscopy", "The world under the microscope."),
        ("weather forecasting", "Models, fronts and how forecasts are made."),
    ],
    "culture": [
        ("true crime podcasts", "Investigations of real cases, episode by episode."),
        ("classic film analysis", "Directors, scenes and film history."),
        ("anime seasonal picks", "What is airing this season and worth watching."),
        ("fantasy book series", "Epic fantasy sagas, worldbuilding and reviews."),
        ("stand-up comedy", "Specials, sets and comedians on tour."),
        ("history documentaries", "Wars, empires and turning points."),
        ("poetry readings", "Poets reading and discussing their work."),
        ("theatre and musicals", "Stage shows, cast albums and backstage."),
        ("mythology and folklore", "Gods, legends and old stories retold."),
        ("architecture tours", "Buildings, styles and the people who made them."),
        ("art history", "Movements, painters and famous works."),
        ("language learning", "Study methods and learning new languages."),
    ],
    "travel": [
        ("budget backpacking", "Travelling far on little money."),
        ("train journeys", "Scenic rail routes and sleeper trains."),
        ("japan travel guides", "Cities, food and etiquette in Japan."),
        ("island hopping", "Ferries and beaches across archipelagos."),
        ("city walking tours", "Neighbourhoods seen on foot."),
        ("digital nomad life", "Working remotely while travelling."),
        ("road trip planning", "Routes, stops and car travel tips."),
        ("luxury hotel reviews", "High-end stays, suites and service."),
        ("airline and aviation geekery", "Planes, routes and airport spotting."),
        ("cruise travel", "Ships, itineraries and life at sea."),
        ("ski resorts", "Slopes, snow and mountain towns."),
        ("hidden european villages", "Small towns off the usual tourist routes."),
    ],
    "money": [
        ("personal budgeting", "Tracking spending and saving on purpose."),
        ("index fund investing", "Low-cost passive investing for the long run."),
        ("frugal living", "Spending less without living worse."),
        ("side hustles", "Small businesses and extra income on the side."),
        ("real estate investing", "Rental properties and the numbers behind them."),
        ("startup stories", "Founders, pivots and companies from zero."),
        ("career advice", "Interviews, negotiation and changing jobs."),
        ("productivity systems", "Notes, to-do methods and focus habits."),
        ("early retirement", "Saving hard to stop working early."),
        ("economics explained", "Markets, inflation and policy made clear."),
        ("small business marketing", "Getting customers without a big budget."),
        ("public speaking", "Talks, nerves and speaking with confidence."),
    ],
    "pets": [
        ("dog training", "Obedience, recall and fixing problem behaviour."),
        ("cat behaviour", "Why cats do what they do."),
        ("aquarium keeping", "Planted tanks, fish and water chemistry."),
        ("reptile care", "Geckos, snakes and their enclosures."),
        ("horse riding", "Riding lessons, care and equestrian sport."),
        ("wildlife rescue", "Rehabilitating injured wild animals."),
        ("parrots and pet birds", "Talking birds, care and enrichment."),
        ("dog breeds explained", "Temperaments and needs of breeds."),
        ("farm animal sanctuaries", "Rescued farm animals and their stories."),
        ("insect keeping", "Ants, mantises and isopods at home."),
        ("pet nutrition", "Feeding pets well and what the labels mean."),
        ("animal documentaries", "Wildlife films from around the world."),
    ],
}

# Topic pairs that share an audience: the fixed cross-topic affinity graph of the simulator.
CROSS_TOPIC: tuple[tuple[str, str], ...] = (
    ("food", "travel"),
    ("food", "home"),
    ("fitness", "outdoors"),
    ("fitness", "food"),
    ("games", "tech"),
    ("games", "culture"),
    ("music", "tech"),
    ("music", "culture"),
    ("outdoors", "travel"),
    ("outdoors", "pets"),
    ("home", "crafts"),
    ("home", "money"),
    ("tech", "science"),
    ("tech", "money"),
    ("crafts", "culture"),
    ("science", "culture"),
    ("science", "pets"),
    ("travel", "money"),
)


@dataclass(frozen=True)
class Cluster:
    name: str
    description: str
    topic: str


def all_clusters() -> list[Cluster]:
    """Every cluster of the taxonomy in a fixed order (topic by topic)."""
    return [Cluster(n, d, topic) for topic, rows in _TOPICS.items() for n, d in rows]


def topics() -> list[str]:
    return list(_TOPICS)
