"""Word lists the generator draws realistic, obviously synthetic demographics from.

Phone numbers use the 555-01XX block that North American numbering reserves for fiction,
so no generated number can ring a real person.
"""

from __future__ import annotations

from typing import Final

FEMALE_GIVEN: Final = (
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Sandra "
    "Margaret Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah Stephanie Dorothy Rebecca "
    "Sharon Laura Cynthia Amy Kathleen Angela Shirley Brenda Emma Anna Pamela Nicole Samantha Katherine "
    "Christine Helen Debra Rachel Carolyn Janet Maria Catherine Heather Diane Olivia Julie Joyce Victoria "
    "Ruth Virginia Lauren Kelly Christina Joan Evelyn Judith Andrea Hannah Megan Cheryl Jacqueline Martha "
    "Madison Teresa Gloria Sara Janice Ann Kathryn Abigail Sophia Frances Jean Alice Judy Isabella Julia "
    "Grace Denise Amber Doris Marilyn Danielle Beverly Charlotte Natalie Theresa Diana Brittany Rosa Lucia "
    "Guadalupe Yolanda Mei Priya Aisha Fatima Ngozi Keiko"
).split()
MALE_GIVEN: Final = (
    "James Robert John Michael David William Richard Joseph Thomas Christopher Charles Daniel Matthew "
    "Anthony Mark Donald Steven Andrew Paul Joshua Kenneth Kevin Brian George Timothy Ronald Jason Edward "
    "Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel "
    "Gregory Alexander Patrick Frank Raymond Jack Dennis Jerry Tyler Aaron Jose Adam Nathan Henry Zachary "
    "Douglas Peter Kyle Noah Ethan Jeremy Walter Christian Keith Roger Terry Austin Sean Gerald Carl Harold "
    "Dylan Arthur Lawrence Jordan Jesse Bryan Billy Bruce Gabriel Joe Logan Alan Juan Albert Willie Elijah "
    "Wayne Randy Vincent Mason Roy Ralph Bobby Russell Bradley Philip Eugene Luis Carlos Miguel Wei Raj "
    "Hiroshi Kwame Omar Tariq"
).split()
FAMILY: Final = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark "
    "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams "
    "Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker "
    "Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper "
    "Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James "
    "Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez "
    "Powell Jenkins Perry Russell Sullivan Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez "
    "Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole "
    "Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens "
    "Harrison Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker "
    "Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz "
    "Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice "
    "Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn Kelley "
    "Spencer Hawkins Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley Knight Elliott Cunningham "
    "Duncan Armstrong Hudson Carroll Lane Riley Andrews Alvarado Ray Delgado Berry Perkins Hoffman Johnston "
    "Matthews Pena Richards Contreras Willis Carpenter Lawrence Sandoval Okafor Nakamura Shah Haddad"
).split()
STREETS: Final = (
    "Oak Maple Cedar Pine Elm Washington Lake Hill Park Main Sunset Ridge Meadow Willow Highland "
    "Jefferson Lincoln Madison River Forest Chestnut Walnut Spruce Birch Magnolia Dogwood Juniper Aspen"
).split()
STREET_SUFFIXES: Final = ("St", "Ave", "Rd", "Dr", "Ln", "Blvd", "Ct", "Way", "Pl")

PRACTICE_SITES: Final = (
    # (practice name stem, city, state, postal code, time zone, area codes)
    ("Lakeshore Spine & Pain", "Chicago", "IL", "60611", "America/Chicago", ("312", "773", "630")),
    ("Desert Interventional Pain", "Phoenix", "AZ", "85016", "America/Phoenix", ("602", "480", "623")),
    ("Piedmont Pain Institute", "Charlotte", "NC", "28204", "America/New_York", ("704", "980", "803")),
    ("Gulf Coast Pain Specialists", "Tampa", "FL", "33606", "America/New_York", ("813", "727", "941")),
    ("Front Range Pain Center", "Denver", "CO", "80218", "America/Denver", ("303", "720", "970")),
    ("Cascade Spine & Pain", "Portland", "OR", "97210", "America/Los_Angeles", ("503", "971", "360")),
    ("Hudson Valley Pain Medicine", "Albany", "NY", "12203", "America/New_York", ("518", "845", "914")),
    ("Lone Star Pain Management", "Austin", "TX", "78705", "America/Chicago", ("512", "737", "254")),
)

PAYERS: Final = (
    "Aetna", "Blue Cross Blue Shield", "Cigna", "UnitedHealthcare", "Humana", "Medicare Part B",
    "Medicaid", "Tricare", "Workers' Compensation", "Self-pay",
)

CHRONIC_OPIOID_REGIMENS: Final = (
    "Oxycodone-acetaminophen 5-325 mg tablet, 1 tablet every 8 hours as needed",
    "Hydrocodone-acetaminophen 10-325 mg tablet, 1 tablet every 6 hours as needed",
    "Morphine sulfate ER 15 mg tablet, 1 tablet every 12 hours",
    "Tramadol 50 mg tablet, 1 tablet every 6 hours as needed",
    "Buprenorphine 10 mcg/hour transdermal patch, 1 patch every 7 days",
    "Tapentadol ER 100 mg tablet, 1 tablet every 12 hours",
)
ADJUVANT_REGIMENS: Final = (
    "Gabapentin 300 mg capsule, 1 capsule three times daily",
    "Duloxetine 60 mg capsule, 1 capsule daily",
    "Meloxicam 15 mg tablet, 1 tablet daily",
    "Cyclobenzaprine 10 mg tablet, 1 tablet at bedtime as needed",
    "Pregabalin 75 mg capsule, 1 capsule twice daily",
)
