import Foundation
import Testing
@testable import TandemOCI

/// The official vectors (oci-go-sdk common/http_signer_test.go, reproducing the doc's test values).
@Suite struct SigningVectorTests {
    let keyId = "\(Fixtures.tenancy)/\(Fixtures.user)/20:3b:97:13:55:1c:5b:0d:d3:37:d8:50:4e:c5:3a:34"
    let date = "Thu, 05 Jan 2014 21:31:40 GMT"
    let host = "iaas.us-phoenix-1.oraclecloud.com"

    func signer() throws -> OCIRequestSigner {
        OCIRequestSigner(keyId: keyId, key: try OCIPrivateKey(pem: Fixtures.testKeyPKCS1))
    }

    @Test func getVector() throws {
        let target = "/20160918/instances?availabilityDomain=Pjwf%3A%20PHX-AD-1&compartmentId=ocid1.compartment.oc1..aaaaaaaam3we6vgnherjq5q2idnccdflvjsnog7mlr6rtdb25gilchfeyjxa&displayName=TeamXInstances&volumeId=ocid1.volume.oc1.phx.abyhqljrgvttnlx73nmrwfaux7kcvzfs3s66izvxf2h4lgvyndsdsnoiwr5q"
        let signed = try signer().sign(method: "GET", host: host, target: target, body: [], date: date)
        #expect(signed.signingString == """
        date: Thu, 05 Jan 2014 21:31:40 GMT
        (request-target): get \(target)
        host: iaas.us-phoenix-1.oraclecloud.com
        """)
        let expected = "GBas7grhyrhSKHP6AVIj/h5/Vp8bd/peM79H9Wv8kjoaCivujVXlpbKLjMPeDUhxkFIWtTtLBj3sUzaFj34XE6YZAHc9r2DmE4pMwOAy/kiITcZxa1oHPOeRheC0jP2dqbTll8fmTZVwKZOKHYPtrLJIJQHJjNvxFWeHQjMaR7M="
        #expect(signed.signature == expected)
        #expect(signed.authorization == "Signature version=\"1\",headers=\"date (request-target) host\",keyId=\"\(keyId)\",algorithm=\"rsa-sha256\",signature=\"\(expected)\"")
        #expect(signed.headers.map(\.name) == ["date", "host", "authorization"])
    }

    @Test func postVector() throws {
        let body = """
        {
            "compartmentId": "ocid1.compartment.oc1..aaaaaaaam3we6vgnherjq5q2idnccdflvjsnog7mlr6rtdb25gilchfeyjxa",
            "instanceId": "ocid1.instance.oc1.phx.abuw4ljrlsfiqw6vzzxb43vyypt4pkodawglp3wqxjqofakrwvou52gb6s5a",
            "volumeId": "ocid1.volume.oc1.phx.abyhqljrgvttnlx73nmrwfaux7kcvzfs3s66izvxf2h4lgvyndsdsnoiwr5q"
        }
        """
        #expect(body.utf8.count == 316)
        let signed = try signer().sign(method: "POST", host: host, target: "/20160918/volumeAttachments",
                                       body: Array(body.utf8), date: date)
        #expect(signed.signingString == """
        date: Thu, 05 Jan 2014 21:31:40 GMT
        (request-target): post /20160918/volumeAttachments
        host: iaas.us-phoenix-1.oraclecloud.com
        content-length: 316
        content-type: application/json
        x-content-sha256: V9Z20UJTvkvpJ50flBzKE32+6m2zJjweHpDMX/U4Uy0=
        """)
        let expected = "Mje8vIDPlwIHmD/cTDwRxE7HaAvBg16JnVcsuqaNRim23fFPgQfLoOOxae6WqKb1uPjYEl0qIdazWaBy/Ml8DRhqlocMwoSXv0fbukP8J5N80LCmzT/FFBvIvTB91XuXI3hYfP9Zt1l7S6ieVadHUfqBedWH0itrtPJBgKmrWso="
        #expect(signed.signature == expected)
        #expect(signed.authorization == "Signature version=\"1\",headers=\"date (request-target) host content-length content-type x-content-sha256\",keyId=\"\(keyId)\",algorithm=\"rsa-sha256\",signature=\"\(expected)\"")
        #expect(signed.header("x-content-sha256") == "V9Z20UJTvkvpJ50flBzKE32+6m2zJjweHpDMX/U4Uy0=")
        #expect(signed.header("content-length") == "316")
    }

    @Test func signaturesAreTheSameFromEveryKeyEncoding() throws {
        for (pem, phrase) in [(Fixtures.testKeyPKCS8, nil), (Fixtures.testKeyPKCS8Encrypted, "secret"),
                              (Fixtures.testKeyLegacyEncrypted, "secret")] as [(String, String?)] {
            let s = OCIRequestSigner(keyId: keyId, key: try OCIPrivateKey(pem: pem, passPhrase: phrase))
            let signed = try s.sign(method: "GET", host: host, target: "/x", body: [], date: date)
            let reference = try signer().sign(method: "GET", host: host, target: "/x", body: [], date: date)
            #expect(signed.signature == reference.signature)
        }
    }

    @Test func emptyBodyPutSignsLengthAndHash() throws {
        let signed = try signer().sign(method: "PUT", host: "127.0.0.1:8443", target: "/20160918/privateIps/a",
                                       body: [], date: date)
        #expect(signed.header("content-length") == "0")
        #expect(signed.header("x-content-sha256") == OCIRequestSigner.emptyBodySHA256)
        #expect(signed.signingString.contains("host: 127.0.0.1:8443"))
        #expect(signed.signingString.contains("(request-target): put /20160918/privateIps/a"))
    }

    @Test func deleteSignsThreeHeaders() throws {
        let signed = try signer().sign(method: "DELETE", host: host, target: "/20160918/privateIps/a", body: [], date: date)
        #expect(signed.headers.map(\.name) == ["date", "host", "authorization"])
    }

    @Test func authorizationParsesInAnyOrder() throws {
        let python = "Signature algorithm=\"rsa-sha256\",headers=\"date (request-target) host\",keyId=\"a/b/c\",signature=\"c2ln\",version=\"1\""
        let parsed = try #require(SignatureAuthorization(header: python))
        #expect(parsed.keyId == "a/b/c")
        #expect(parsed.headers == ["date", "(request-target)", "host"])
        #expect(parsed.signature == "c2ln")
        #expect(SignatureAuthorization(header: "Bearer Oracle") == nil)
    }

    @Test func verifyWithPublicKey() throws {
        let signed = try signer().sign(method: "GET", host: host, target: "/x", body: [], date: date)
        let pub = try OCIPublicKey(pem: Fixtures.testPublicKey)
        let sig = [UInt8](try #require(Data(base64Encoded: signed.signature)))
        #expect(pub.verify(signature: sig, for: Array(signed.signingString.utf8)))
        #expect(!pub.verify(signature: sig, for: Array((signed.signingString + " ").utf8)))
    }

    @Test func httpDateFormatAndParse() throws {
        // (5 Jan 2014 was a Sunday; the official vector's "Thu" is only signed text, never parsed.)
        let d = Date(timeIntervalSince1970: 1_388_957_500)
        #expect(HTTPDate.format(d) == "Sun, 05 Jan 2014 21:31:40 GMT")
        #expect(HTTPDate.parse("Thu, 05 Jan 2014 21:31:40 GMT") == d)
        #expect(HTTPDate.format(Date(timeIntervalSince1970: 1_795_000_000)) == "Wed, 18 Nov 2026 11:06:40 GMT")
        #expect(HTTPDate.parse("yesterday") == nil)
    }

    @Test func percentEncodingAndTargets() {
        #expect(percentEncode("Pjwf: PHX-AD-1") == "Pjwf%3A%20PHX-AD-1")
        #expect(percentEncode("ocid1.subnet.oc1.iad.aaaa~_-") == "ocid1.subnet.oc1.iad.aaaa~_-")
        #expect(OCIRequest.listPrivateIps(ipAddress: "10.0.10.143", subnetId: "ocid1.subnet.oc1.iad.s").target
                == "/20160918/privateIps?ipAddress=10.0.10.143&subnetId=ocid1.subnet.oc1.iad.s")
        #expect(String(decoding: OCIRequest.updatePrivateIp(privateIpId: "p", vnicId: "v\"").body, as: UTF8.self)
                == #"{"vnicId":"v\""}"#)
    }
}
